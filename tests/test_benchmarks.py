"""The benchmark scripts run (in their --quick mode) so that they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_overhead_benchmark_quick_run_reports_both_ratios(tmp_path):
    out = tmp_path / "overhead.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("train") for line in lines)
    assert any(line.startswith("eval") for line in lines)
    results = json.loads(out.read_text())["results"]
    for mode in ("train", "eval"):
        assert results[mode]["pairs"] == 4
        assert results[mode]["median_ratio"] > 0
