"""``python -m latentshift ...`` runs the command line (see :mod:`latentshift.cli`)."""

from .cli import entry

entry()
