"""``python -m gptlab`` runs the command-line tool."""

import sys

from gptlab.cli import main

sys.exit(main())
