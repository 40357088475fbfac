"""``python -m latentshift ...`` runs the command line (see :mod:`latentshift.cli`)."""

import sys

from .cli import main

sys.exit(main())
