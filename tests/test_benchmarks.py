"""The benchmark scripts run (in their --quick mode) so that they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_quick(script: str, out: Path) -> subprocess.CompletedProcess:
    """``benchmarks/<script> --quick --out <out>`` from the project's root; it must succeed."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    return run


def test_overhead_benchmark_quick_run_reports_both_ratios(tmp_path):
    out = tmp_path / "overhead.json"
    run = run_quick("overhead.py", out)
    lines = run.stdout.splitlines()
    assert any(line.startswith("train") for line in lines)
    assert any(line.startswith("eval") for line in lines)
    results = json.loads(out.read_text())["results"]
    for mode in ("train", "eval"):
        assert results[mode]["pairs"] == 4
        assert results[mode]["median_ratio"] > 0


def test_convert_benchmark_quick_run_writes_table_rows(tmp_path):
    out = tmp_path / "convert.md"
    run = run_quick("convert.py", out)
    assert "1 thread(s)" in run.stdout
    # With Torch-Pruning its version is printed; without it, how to install it.
    assert "Torch-Pruning 1." in run.stdout or "pip install --no-deps torch-pruning" in run.stdout
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")]
    rows = {(cells[0].strip(), cells[1].strip()): [cell.strip() for cell in cells] for cells in rows}
    for measure in ("convert", "prune8"):
        cells = rows[(measure, "resnet18")]
        assert cells[2] == "1x3x32x32"
        assert cells[3] == "2"
        assert float(cells[4]) > 0
