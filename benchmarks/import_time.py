"""What ``import prunable_nn`` costs on top of ``import torch``.

What is measured
    A fresh interpreter runs ``import torch`` (A) or ``import prunable_nn`` (B, which imports
    torch first), and reports the seconds the import took (``time.perf_counter`` around it,
    so the interpreter's own start-up is left out). The runs alternate (A then B, B then A,
    ...) so that drifts in machine speed hit both alike; the result is the median of the
    differences ``B - A`` of the pairs, with the interquartile range. The modules that
    ``import prunable_nn`` loads beyond torch's are listed: torchvision, matplotlib and
    torch's compiler load only when a program asks for them.

Target: at most 0.3 s more than ``import torch``.

Usage: ``python benchmarks/import_time.py [--pairs N] [--quick] [--out result.md]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from report import add_common_arguments

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.3
#: Reports the import's seconds and, for prunable_nn, the top-level modules it added to torch's.
PROGRAM = """
import json, sys, time
start = time.perf_counter()
import torch
middle = time.perf_counter()
{extra}
end = time.perf_counter()
print(json.dumps({{"seconds": end - start, "after_torch": end - middle, "modules": sorted(sys.modules)}}))
"""


def timed_import(module: str) -> dict:
    """One fresh interpreter's import of torch and then ``module`` (``torch``: nothing more)."""
    extra = "" if module == "torch" else f"import {module}"
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(extra=extra)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(run.stdout)


def measure(pairs: int) -> dict:
    differences, torch_seconds, ours_seconds, added = [], [], [], set()
    for index in range(pairs):
        order = ("torch", "prunable_nn") if index % 2 == 0 else ("prunable_nn", "torch")
        runs = {module: timed_import(module) for module in order}
        differences.append(runs["prunable_nn"]["seconds"] - runs["torch"]["seconds"])
        torch_seconds.append(runs["torch"]["seconds"])
        ours_seconds.append(runs["prunable_nn"]["seconds"])
        added |= {name.split(".")[0] for name in runs["prunable_nn"]["modules"]} - {
            name.split(".")[0] for name in runs["torch"]["modules"]
        }
    quartiles = statistics.quantiles(differences, n=4) if pairs > 1 else differences * 3
    return {
        "pairs": pairs,
        "median_difference_s": statistics.median(differences),
        "q1_s": quartiles[0],
        "q3_s": quartiles[2],
        "median_torch_s": statistics.median(torch_seconds),
        "median_prunable_nn_s": statistics.median(ours_seconds),
        "modules_added": sorted(added),
        "target_s": TARGET,
        "target_met": statistics.median(differences) <= TARGET,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=None, help="alternated pairs of imports (default 20)")
    add_common_arguments(parser, "import_time.md")
    args = parser.parse_args(argv)
    pairs = args.pairs or (2 if args.quick else 20)
    if pairs < 1:
        parser.error(f"--pairs must be at least 1, got {pairs}")
    result = measure(pairs)
    lines = [
        "# import prunable_nn against import torch",
        "",
        f"{pairs} alternated pairs of fresh interpreters (`benchmarks/import_time.py`).",
        "",
        "| import torch s | import prunable_nn s | difference s (IQR) | target s | met |",
        "| ---: | ---: | ---: | ---: | --- |",
        f"| {result['median_torch_s']:.2f} | {result['median_prunable_nn_s']:.2f} | "
        f"{result['median_difference_s']:.2f} ({result['q1_s']:.2f}-{result['q3_s']:.2f}) | {TARGET:.1f} | "
        f"{'yes' if result['target_met'] else 'NO'} |",
        "",
        f"Top-level modules loaded beyond torch's: {', '.join(result['modules_added']) or 'none'}.",
    ]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
