"""`python -m lab.synthface`: the world-building lab's command line."""

import sys

from lab.synthface.cli import main

sys.exit(main())
