"""Run the command line with ``python -m dmask.cli``."""

import sys

from dmask.cli import main

sys.exit(main())
