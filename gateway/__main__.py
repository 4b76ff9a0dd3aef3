"""``python -m gateway`` runs the ``eventgate`` command."""

import sys

from gateway.cli import main

sys.exit(main())
