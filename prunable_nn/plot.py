"""A picture of a pruning run: accuracy against FLOPs, with the parameter count beside it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

from .loop import History  # noqa: E402


def plot_history(history: History, path: str | Path, title: str = "") -> Path:
    """Write a PNG of ``history``: validation accuracy (left axis) and parameters (right
    axis) against FLOPs, both in % of the first row, one point per round. Returns the path."""
    if not history:
        raise ValueError("cannot plot an empty history")
    start = history[0]
    flops = [100 * row.flops / start.flops for row in history]
    figure, accuracy_axis = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    try:
        accuracy_axis.plot(flops, [100 * row.accuracy for row in history], "o-", color="tab:blue")
        accuracy_axis.set_xlabel("FLOPs (% of the unpruned network)")
        accuracy_axis.set_ylabel("validation accuracy (%)", color="tab:blue")
        accuracy_axis.invert_xaxis()  # pruning goes left to right
        accuracy_axis.grid(alpha=0.3)
        params_axis = accuracy_axis.twinx()
        params_axis.plot(
            flops, [100 * row.parameters / start.parameters for row in history], "s--", color="tab:orange"
        )
        params_axis.set_ylabel("parameters (% of the unpruned network)", color="tab:orange")
        for row, x, y in zip(history, flops, (100 * row.accuracy for row in history)):
            accuracy_axis.annotate(str(row.round), (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7)
        if title:
            accuracy_axis.set_title(title)
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
