"""``python -m prunable_nn demo``: see :mod:`prunable_nn.app.cli`."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
