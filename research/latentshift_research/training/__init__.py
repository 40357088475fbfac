"""Training of the embedded demo models: data (``data``), figures (``metrics``), recipes (``train``).

The command-line face is :mod:`latentshift.cli.training` (``latentshift train``).
"""
