"""``python -m gptlab`` runs the command-line tool."""

import sys

from gptlab.app import main

sys.exit(main())
