"""python -m r1kit: same as the r1kit console script."""

import sys

from r1kit.cli import main

sys.exit(main())
