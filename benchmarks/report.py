"""What every benchmark script shares: its common options and how it writes its results."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def add_common_arguments(parser: argparse.ArgumentParser, out_name: str) -> None:
    """``--threads``, ``--quick`` and ``--out`` (default ``results/<out_name>``)."""
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=RESULTS / out_name)


def say(line: str) -> None:
    """Print ``line`` to stdout in one write and flush it.

    ``print(line, flush=True)`` writes the text and its newline in two system calls, so when
    the ``--jobs`` workers share one pipe, another worker's line can land between them and
    two progress lines run together (a reader looking for a line's start then misses one).
    One write of at most ``PIPE_BUF`` (4096) bytes to a pipe is atomic, so whole lines
    never mix.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def machine() -> str:
    """The machine and torch, as every table header names them."""
    return f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def mean_and_spread(values: list[float], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """``mean ± standard deviation`` of ``scale * values`` (spread 0 for one value)."""
    scaled = [scale * value for value in values]
    spread = statistics.stdev(scaled) if len(scaled) > 1 else 0.0
    return f"{statistics.fmean(scaled):.{digits}f}{unit} ± {spread:.{digits}f}"


def write(args: argparse.Namespace, header: str, table: list[str], numbers: dict) -> None:
    """Print ``header`` and the markdown ``table``, write them to ``args.out``, and the
    settings and ``numbers`` as JSON next to it."""
    lines = [header, "", *table]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    settings = {key: str(value) for key, value in vars(args).items()}
    args.out.with_suffix(".json").write_text(json.dumps({"settings": settings, **numbers}, indent=2))
