"""prune_loop: fine-tune, prune, measure, until a target; on a tiny conv net and the digits."""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass, fields

import pytest
import torch
import torch.nn.functional as F
from nets import (
    accumulate_estimates,
    assert_same_snapshot,
    snapshot,
    train,
)
from torch import nn

from prunable_nn import (
    AccuracyDrop,
    ChannelsTarget,
    FlopsTarget,
    ParamsTarget,
    Round,
    TaylorPruner,
    count_flops,
    count_parameters,
    evaluate,
    prune_loop,
)
from prunable_nn.app import data
from prunable_nn.training import make_loader, train_epoch

EXAMPLE = torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="module")
def digits_sets():
    return data.digits(train=True), data.digits(train=False)


@dataclass
class Setup:
    model: nn.Sequential
    pruner: TaylorPruner
    optimizer: torch.optim.Optimizer
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader

    def run(self, **options):
        options = {"steps_per_round": 4, "max_to_prune": 2, "progress": False, **options}
        return prune_loop(
            self.model, self.pruner, self.train_loader, self.val_loader, self.optimizer, **options
        )


@pytest.fixture
def setup(digits_sets) -> Setup:
    """A tiny conv net of plain torch layers (8 + 8 channels: 14 prunable units), trained
    for one epoch on the digits."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )
    pruner = TaylorPruner(model, EXAMPLE)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_loader = make_loader(digits_sets[0], 64, shuffle=True)
    train_epoch(model, optimizer, train_loader, progress=False)
    return Setup(model, pruner, optimizer, train_loader, make_loader(digits_sets[1], 512))


def optimizer_snapshot(optimizer: torch.optim.Optimizer) -> dict:
    return {
        (index, name): value.clone()
        for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"])
        for name, value in optimizer.state[param].items()
    }


def total_channels(pruner: TaylorPruner) -> int:
    return sum(chain.num_channels for chain in pruner.chains)


# -- stopping ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target, met",
    [
        (FlopsTarget(0.5), lambda start, row: row.flops <= 0.5 * start.flops),
        (ParamsTarget(0.6), lambda start, row: row.parameters <= 0.6 * start.parameters),
        (ChannelsTarget(5), lambda start, row: start.units_left - row.units_left >= 5),
    ],
    ids=["flops", "params", "channels"],
)
def test_stops_at_the_first_round_that_meets_a_size_target(setup, target, met):
    history = setup.run(target=target)
    start, before, last = history[0], history[-2], history[-1]
    assert len(history) >= 3  # at least two rounds: the target is not met by row 0 or 1
    assert met(start, last) and not met(start, before)
    assert not any(met(start, row) for row in history[:-1])
    assert last.reached and not any(row.reached for row in history[:-1])
    assert last.units_left > 0 and repr(target) in history.stop_reason


def test_accuracy_drop_stops_at_the_round_that_exceeds_it_and_keeps_that_model(setup):
    floor_drop = 0.03
    history = setup.run(target=AccuracyDrop(floor_drop), max_to_prune=3)
    start, last = history[0], history[-1]
    floor = start.accuracy - floor_drop
    assert len(history) >= 2 and last.units_left > 0  # stopped by the target, not by running out
    assert last.accuracy < floor and all(row.accuracy >= floor for row in history[:-1])
    assert last.reached and "AccuracyDrop" in history.stop_reason
    # the model is the last round's pruned one, past the budget, as the history says
    assert evaluate(setup.model, setup.val_loader, progress=False) == last.accuracy
    assert count_parameters(setup.model) == last.parameters


def test_any_of_several_targets_stops_the_loop(setup):
    history = setup.run(target=[FlopsTarget(0.01), ChannelsTarget(4)])
    assert history[0].units_left - history[-1].units_left == 4 and len(history) == 3
    assert "ChannelsTarget" in history.stop_reason and "FlopsTarget" not in history.stop_reason


def test_stops_when_nothing_is_left_to_prune(setup):
    history = setup.run(target=FlopsTarget(0.001), max_to_prune=5, max_rounds=10)
    assert history[-1].units_left == 0 == setup.pruner.num_prunables
    assert all(row.units_left > 0 for row in history[:-1])
    assert [chain.num_channels for chain in setup.pruner.chains] == [1, 1]
    assert [row.units_removed for row in history] == [0, 5, 5, 4]
    assert not any(row.reached for row in history) and "nothing left" in history.stop_reason


def test_stops_after_max_rounds(setup):
    history = setup.run(target=FlopsTarget(0.001), max_rounds=2, max_to_prune=1)
    assert [row.round for row in history] == [0, 1, 2]
    assert history[-1].units_left == 12 and "max_rounds=2" in history.stop_reason


def test_flops_per_round_gives_every_prune_that_share_of_the_starting_flops(setup, monkeypatch):
    budgets = []
    prune = setup.pruner.prune

    def recorded(max_to_prune, optimizer=None, *, flops=None):
        budgets.append((max_to_prune, flops))
        return prune(max_to_prune, optimizer, flops=flops)

    monkeypatch.setattr(setup.pruner, "prune", recorded)
    history = setup.run(target=FlopsTarget(0.5), max_to_prune=None, flops_per_round=0.1)
    assert budgets == [(None, 0.1 * history[0].flops)] * (len(history) - 1)
    assert history[-1].reached and len(history) >= 3
    assert [row.units_removed for row in history[1:]] != [history[1].units_removed] * (len(history) - 1)


def test_the_loss_function_is_the_one_given(setup):
    calls = []

    def loss_fn(outputs, labels):
        calls.append(len(labels))
        return F.cross_entropy(outputs, labels, label_smoothing=0.1)

    history = setup.run(target=FlopsTarget(0.001), max_rounds=2, loss_fn=loss_fn)
    assert len(calls) == 2 * 4
    assert all(row.train_loss > 0.1 for row in history[1:])  # smoothing keeps the loss up


def test_a_target_met_at_the_start_prunes_nothing(setup):
    before = snapshot(setup.model, setup.pruner)
    history = setup.run(target=FlopsTarget(1.0))
    assert len(history) == 1 and history[0].reached
    assert_same_snapshot(before, snapshot(setup.model, setup.pruner))


# -- the history ------------------------------------------------------------------------------
def test_history_rows_agree_with_the_model(setup):
    units, channels = setup.pruner.num_prunables, total_channels(setup.pruner)
    history = setup.run(target=ParamsTarget(0.4), max_to_prune=3)
    last = history[-1]
    assert [row.round for row in history] == list(range(len(history)))
    assert last.parameters == count_parameters(setup.model)
    assert last.flops == count_flops(setup.model, EXAMPLE)
    assert last.units_left == setup.pruner.num_prunables
    removed = sum(row.units_removed for row in history)
    assert removed == units - last.units_left == channels - total_channels(setup.pruner) > 0
    assert all(0 < row.units_removed <= 3 for row in history[1:])
    assert history[0].units_left == units and history[0].units_removed == 0
    for earlier, later in itertools.pairwise(history):
        assert later.parameters < earlier.parameters and later.flops < earlier.flops
        assert later.seconds >= earlier.seconds
    assert history[0].train_loss is None
    assert all(math.isfinite(row.train_loss) and row.train_loss > 0 for row in history[1:])
    assert all(0 <= row.accuracy <= 1 for row in history)
    # the optimizer's state followed the pruning: training goes on
    inputs, labels = setup.val_loader.dataset.tensors
    train(setup.model, setup.optimizer, inputs[:16], labels[:16])


def test_csv_has_a_header_and_one_line_per_row(setup, tmp_path):
    path = tmp_path / "history.csv"
    history = setup.run(target=ChannelsTarget(4), csv_path=path)
    with open(path, newline="") as file:
        lines = list(csv.reader(file))
    assert lines[0] == [field.name for field in fields(Round)]
    assert len(lines) == len(history) + 1
    for line, row in zip(lines[1:], history):
        record = dict(zip(lines[0], line, strict=True))
        assert int(record["round"]) == row.round and int(record["units_left"]) == row.units_left
        assert int(record["units_removed"]) == row.units_removed
        assert int(record["parameters"]) == row.parameters and int(record["flops"]) == row.flops
        assert float(record["accuracy"]) == row.accuracy and float(record["seconds"]) == row.seconds
        assert (record["train_loss"] == "") if row.train_loss is None else float(record["train_loss"]) == row.train_loss
        assert record["reached"] == str(row.reached)


def test_on_round_sees_every_row_as_it_is_measured(setup):
    seen = []

    def on_round(row):
        seen.append((row, count_parameters(setup.model)))  # the model as the row measured it

    history = setup.run(target=ChannelsTarget(5), on_round=on_round)
    assert [row for row, _ in seen] == list(history) and len(seen) >= 3
    assert all(row.parameters == parameters for row, parameters in seen)


def test_estimates_are_reset_after_every_prune(setup):
    pruner, prune = setup.pruner, setup.pruner.prune
    seen = []

    def checked_prune(*args, **kwargs):
        examples = {layer.examples_seen for chain in pruner.chains for layer in chain.estimators}
        removals = prune(*args, **kwargs)
        seen.append((examples, [chain.estimates() is None for chain in pruner.chains]))
        return removals

    inputs, labels = setup.val_loader.dataset.tensors
    accumulate_estimates(setup.model, inputs[:50], labels[:50])  # stale: the loop forgets them
    pruner.prune = checked_prune
    history = setup.run(target=FlopsTarget(0.3))  # 4 steps of 64 examples per round
    assert len(seen) == len(history) - 1 >= 2
    assert seen[0][0] == {4 * 64} and all(max(examples) <= 4 * 64 for examples, _ in seen)
    assert all(all(reset) for _, reset in seen)
    assert all(chain.estimates() is None for chain in pruner.chains)


def test_progress_bar_shows_flops_and_accuracy(setup, capsys):
    setup.run(target=ChannelsTarget(2), progress=True)
    shown = capsys.readouterr().err
    assert "FLOPs=" in shown and "acc=" in shown and "round" in shown
    setup.run(target=ChannelsTarget(2))
    assert capsys.readouterr().err == ""


# -- bad arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FlopsTarget(0), "fraction must be in \\(0, 1\\], got 0"),
        (lambda: FlopsTarget(1.5), "got 1.5"),
        (lambda: ParamsTarget(-0.2), "ParamsTarget: fraction .* got -0.2"),
        (lambda: ParamsTarget(float("nan")), "got nan"),
        (lambda: ChannelsTarget(0), "removed must be a positive integer, got 0"),
        (lambda: ChannelsTarget(2.5), "got 2.5"),
        (lambda: AccuracyDrop(-0.01), "max_drop must be in \\[0, 1\\] .*got -0.01"),
        (lambda: AccuracyDrop(5), "got 5"),
    ],
)
def test_bad_targets(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"steps_per_round": 0}, ValueError, "steps_per_round must be a positive integer, got 0"),
        ({"max_to_prune": 0}, ValueError, "max_to_prune must be a positive integer or None, got 0"),
        ({"max_to_prune": True}, ValueError, "max_to_prune .* got True"),
        ({"max_to_prune": None}, ValueError, "max_to_prune=None needs flops_per_round"),
        ({"flops_per_round": 0}, ValueError, r"flops_per_round must be in \(0, 1\] or None, got 0"),
        ({"flops_per_round": 1.5}, ValueError, "got 1.5"),
        ({"flops_per_round": True}, ValueError, "got True"),
        ({"max_rounds": -1}, ValueError, "max_rounds must be a positive integer, got -1"),
        ({"target": 0.5}, TypeError, "target must be a Target.* got 0.5"),
        ({"target": []}, TypeError, "got \\[\\]"),
        ({"other_model": True}, ValueError, "another model"),
        ({"round_to": 4, "max_to_prune": 3}, ValueError, r"max_to_prune \(3\) must be at least round_to \(4\)"),
    ],
)
def test_bad_arguments_raise_before_any_change(setup, options, error, message):
    inputs, labels = setup.val_loader.dataset.tensors
    accumulate_estimates(setup.model, inputs[:32], labels[:32])  # a reset would show
    if options.pop("other_model", False):
        setup.pruner = TaylorPruner(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), EXAMPLE)
    setup.pruner.round_to = options.pop("round_to", 1)
    before = snapshot(setup.model)
    optimizer_state = optimizer_snapshot(setup.optimizer)
    with pytest.raises(error, match=message):
        setup.run(**{"target": FlopsTarget(0.5), **options})
    assert_same_snapshot(before, snapshot(setup.model))
    after = optimizer_snapshot(setup.optimizer)
    assert after.keys() == optimizer_state.keys()
    assert all(torch.equal(after[key], value) for key, value in optimizer_state.items())
