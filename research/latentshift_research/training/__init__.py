"""Training of the embedded demo models: data (``data``), figures (``metrics``), recipes (``train``).

The command-line face is :mod:`latentshift_research.cli.training` (``python -m latentshift_research train``).
"""
