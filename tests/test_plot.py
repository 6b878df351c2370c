"""The picture of a pruning run."""

from __future__ import annotations

import matplotlib.image
import matplotlib.pyplot as plt
import pytest

from prunable_nn import History, Round
from prunable_nn.app.plot import history_figure, plot_history


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


def test_the_figure_plots_accuracy_and_parameters_against_flops_in_percent():
    figure = history_figure(history(), finetuned_accuracy=0.89)
    try:
        accuracy_axis, params_axis = figure.axes
        accuracy_line, star = accuracy_axis.get_lines()
        assert list(accuracy_line.get_xdata()) == [100, 60, 40]
        assert list(accuracy_line.get_ydata()) == pytest.approx([90, 88, 85])
        assert list(star.get_xdata()) == [40] and list(star.get_ydata()) == pytest.approx([89])
        (params_line,) = params_axis.get_lines()
        assert list(params_line.get_xdata()) == [100, 60, 40]
        assert list(params_line.get_ydata()) == [100, 60, 40]
        assert [text.get_text() for text in accuracy_axis.texts] == ["0", "1", "2"]
        assert accuracy_axis.xaxis_inverted()
        assert len(figure.legends[0].get_texts()) == 3
    finally:
        plt.close(figure)


def test_without_a_finetuned_accuracy_there_is_no_star():
    figure = history_figure(history())
    try:
        assert len(figure.axes[0].get_lines()) == 1
        assert [text.get_text() for text in figure.legends[0].get_texts()] == ["accuracy after each prune", "parameters"]
    finally:
        plt.close(figure)
