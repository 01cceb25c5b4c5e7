"""``python -m cifarops.train``: see ``--help``."""

import sys

from cifarops.train.cli import console

if __name__ == "__main__":
    sys.exit(console())
