"""The picture of a pruning run."""

from __future__ import annotations

import matplotlib.image
import pytest

from prunable_nn.loop import History, Round
from prunable_nn.plot import plot_history


def history() -> History:
    rows = History()
    for round_, (flops, parameters, accuracy) in enumerate([(100, 50, 0.9), (60, 30, 0.88), (40, 20, 0.85)]):
        rows.append(Round(round_, 10 - round_, round_, parameters, flops, None if round_ == 0 else 0.3, accuracy, 1.0 * round_))
    return rows


def test_plot_writes_a_png_with_something_drawn(tmp_path):
    path = plot_history(history(), tmp_path / "run.png", title="digits")
    image = matplotlib.image.imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_an_empty_history_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty history"):
        plot_history(History(), tmp_path / "run.png")
    assert not (tmp_path / "run.png").exists()
