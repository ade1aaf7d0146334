"""``python -m rewards.math``: the same as ``r1kit grade``."""

import sys

from rewards.math.cli import main

sys.exit(main())
