"""``python -m omnifast`` runs the command line."""

import sys

from omnifast.cli import main

sys.exit(main())
