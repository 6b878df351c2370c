"""What every test module shares: ``benchmarks/`` on the import path, so that tests import the
benchmark scripts they run and the model zoo (``benchmarks/zoo.py``) the benchmarks measure,
and one torch thread.

``make test`` runs two test workers (pytest-xdist, ``-n 2 --dist loadgroup``) on two cores.
Every process runs one torch thread: each test module's (:func:`one_torch_thread`), and
every subprocess a test starts (``OMP_NUM_THREADS``), since a second thread beside a busy
worker stalls at every OpenMP barrier. The tests that start several processes of their own
(the benchmarks' quick runs, the distributed ranks) are one ``xdist_group``: they run one
after the other on one worker, while the other runs the rest.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import pytest  # noqa: E402
import torch  # noqa: E402

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
