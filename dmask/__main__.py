"""Run the command line with ``python -m dmask``."""

import sys

from dmask.cli import main

sys.exit(main())
