"""``python -m latentshift_research ...`` runs the research command line (see :mod:`latentshift_research.cli`)."""

from .cli import entry

entry()
