"""`python -m yoloprune` runs the command line."""

import sys

from yoloprune.cli import main

sys.exit(main())
