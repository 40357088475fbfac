"""Input and output: reading X-rays (``imaging``) and writing what people see (``render``).

``imaging`` turns PNG/JPEG/TIFF/DICOM bytes into an :class:`~latentshift.io.imaging.XrayImage`
in the model pixel range [-1024, 1024]; ``render`` writes the GIF, the overlays and the plots.
"""
