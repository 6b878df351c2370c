"""``python -m prunable_nn demo``: see :mod:`prunable_nn.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
