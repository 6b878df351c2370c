"""A picture of a pruning run: accuracy against FLOPs, with the parameter count beside it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
from matplotlib.figure import Figure  # noqa: E402

from ..targets import History  # noqa: E402


def history_figure(history: History, title: str = "", finetuned_accuracy: float | None = None) -> Figure:
    """The figure of ``history``: validation accuracy (left axis) and parameters (right axis)
    against FLOPs, all in % of the first row, one point per round, labelled with its number.
    With ``finetuned_accuracy`` (0..1, on the same validation set), a star at the last round's
    FLOPs shows the network after a final fine-tuning. Close it with ``plt.close(figure)``."""
    if not history:
        raise ValueError("cannot plot an empty history")
    start = history[0]
    flops = [100 * row.flops / start.flops for row in history]
    accuracy = [100 * row.accuracy for row in history]
    figure, accuracy_axis = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    accuracy_axis.plot(flops, accuracy, "o-", color="tab:blue", label="accuracy after each prune")
    accuracy_axis.set_xlabel("FLOPs (% of the unpruned network)")
    accuracy_axis.set_ylabel("validation accuracy (%)", color="tab:blue")
    accuracy_axis.invert_xaxis()  # pruning goes left to right
    accuracy_axis.grid(alpha=0.3)
    for row, x, y in zip(history, flops, accuracy):
        accuracy_axis.annotate(str(row.round), (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7)
    if finetuned_accuracy is not None:
        accuracy_axis.plot(
            flops[-1], 100 * finetuned_accuracy, "*", color="tab:green", markersize=12, label="accuracy fine-tuned"
        )
    params_axis = accuracy_axis.twinx()
    params_axis.plot(
        flops, [100 * row.parameters / start.parameters for row in history], "s--", color="tab:orange",
        label="parameters",
    )
    params_axis.set_ylabel("parameters (% of the unpruned network)", color="tab:orange")
    if title:
        accuracy_axis.set_title(title)
    lines = accuracy_axis.get_lines() + params_axis.get_lines()
    figure.legend(lines, [line.get_label() for line in lines], loc="lower center", ncol=len(lines), frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the axes
    return figure


def plot_history(
    history: History, path: str | Path, title: str = "", finetuned_accuracy: float | None = None
) -> Path:
    """Write :func:`history_figure` as a PNG at ``path``; returns the path."""
    figure = history_figure(history, title, finetuned_accuracy)
    try:
        path = Path(path)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
