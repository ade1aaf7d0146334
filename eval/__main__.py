"""``python -m eval`` is ``r1kit eval``."""

import sys

from r1kit.cli import cmd_eval

sys.exit(cmd_eval(sys.argv[1:]))
