"""What every test module shares: ``benchmarks/`` on the import path, so that tests import the
benchmark scripts they run and the model zoo (``benchmarks/zoo.py``) the benchmarks measure."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
