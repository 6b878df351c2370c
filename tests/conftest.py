"""What every test module shares: ``benchmarks/`` on the import path, so that tests import the
benchmark scripts they run and the model zoo (``benchmarks/zoo.py``) the benchmarks measure,
and one torch thread."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run each test module on one torch thread: the tensors are tiny, a second thread on a
    busy two-core machine makes each convolution up to a hundred times slower, and the
    numbers a test (or a README example) prints do not depend on the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
