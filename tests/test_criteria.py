"""The criteria next to Taylor: what each records or computes, and how the pruner ranks it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nets import accumulate_estimates, conv_nets, random_batch
from prunable_nn import PBatchNorm2d, PConv2d, PLinear, PrunableLayer, TaylorPruner
from prunable_nn.criteria import (
    APoZ, ActivationMean, ActivationStd, MinWeight, Oracle, RandomScores, Taylor,
)
from prunable_nn.ranking import l2_normalise

PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RECORDED = [Taylor(), ActivationMean(), ActivationStd(), APoZ()]


def by_hand(criterion, output: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The criterion's per-example values, written out over ``(N, C, H, W)``, averaged."""
    z = output.clamp(min=0)
    values = {
        "Taylor": (output * grad).mean(dim=(2, 3)).abs(),
        "activation mean": z.mean(dim=(2, 3)),
        "activation std": (  # over the positions; a 1x1 map has one: over the batch
            ((z - z.mean(dim=(2, 3), keepdim=True)) ** 2).mean(dim=(2, 3)).sqrt() if z[0, 0].numel() > 1
            else ((z - z.mean(dim=0)) ** 2).mean(dim=0).sqrt().flatten().expand(len(z), -1)
        ),
        "APoZ": 1 - (z == 0).double().mean(dim=(2, 3)),
    }[criterion.name]
    return values.double().mean(dim=0)


@settings(max_examples=40, deadline=None)
@given(
    criterion=st.sampled_from(RECORDED),
    batch=st.integers(2, 5), channels=st.integers(1, 6), size=st.integers(1, 6), seed=st.integers(0, 2**16),
)
def test_recorded_statistics_are_their_formulas_averaged_over_examples(criterion, batch, channels, size, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(PConv2d(2, channels, 3, padding=1), PBatchNorm2d(channels), nn.ReLU(),
                          nn.Flatten(), PLinear(channels * size * size, 3))
    inputs = torch.randn(batch, 2, size, size)
    pruner = TaylorPruner(model, inputs[:1], criterion=criterion)
    seen = {}
    model[1].register_forward_hook(lambda module, args, output: seen.update(output=output.detach().clone()))
    model[1].register_full_backward_hook(lambda module, grad_in, grad_out: seen.update(grad=grad_out[0].clone()))
    model.train()
    model(inputs).square().sum().backward()
    (member,) = pruner.estimator_members
    assert member.layer is model[1] and model[1].statistic is criterion.statistic
    torch.testing.assert_close(member.layer.taylor_estimates, by_hand(criterion, seen["output"], seen["grad"]))


def test_the_pruner_sets_the_statistic_only_on_its_estimators():
    model = nn.Sequential(PConv2d(1, 4, 3), PBatchNorm2d(4), nn.ReLU(), nn.Flatten(), PLinear(4 * 4 * 4, 2))
    TaylorPruner(model, torch.zeros(1, 1, 6, 6), criterion=APoZ())
    assert [layer.estimating for layer in (model[0], model[1], model[4])] == [False, True, False]
    assert model[1].statistic is APoZ.statistic


@pytest.mark.parametrize("criterion", [MinWeight(), RandomScores(0)], ids=repr)
def test_criteria_computed_at_ranking_record_nothing(criterion):
    model = nn.Sequential(PConv2d(1, 4, 3), PBatchNorm2d(4), nn.ReLU(), nn.Flatten(), PLinear(4 * 4 * 4, 2))
    pruner = TaylorPruner(model, torch.zeros(1, 1, 6, 6), criterion=criterion)
    assert not any(layer.estimating for layer in model.modules() if isinstance(layer, PrunableLayer))
    model.train()
    model(torch.randn(3, 1, 6, 6)).sum().backward()
    assert model[1].taylor_estimates is None
    assert len(pruner.prune(2)[0].indices) == 2  # no estimates needed


def test_min_weight_ranks_the_mean_squared_weight_of_each_output_channel():
    torch.manual_seed(0)
    model = nn.Sequential(PConv2d(2, 5, 3), PBatchNorm2d(5), nn.ReLU(), nn.Flatten(),
                          PLinear(5 * 4 * 4, 6), nn.ReLU(), PLinear(6, 2))
    pruner = TaylorPruner(model, torch.zeros(1, 2, 6, 6), normalize=False, criterion=MinWeight())
    conv_scores, linear_scores = pruner.scores()
    torch.testing.assert_close(conv_scores, model[0].weight.detach().double().pow(2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(linear_scores, model[4].weight.detach().double().pow(2).mean(dim=1))
    normalised = TaylorPruner(model, torch.zeros(1, 2, 6, 6), criterion=MinWeight()).scores()
    torch.testing.assert_close(normalised[0], l2_normalise(conv_scores))
    lowest = int(conv_scores.argmin()) if conv_scores.min() < linear_scores.min() else None
    removals = pruner.prune(1)
    if lowest is not None:
        assert removals[0].chain == "0" and removals[0].indices == (lowest,)


def test_random_scores_repeat_with_the_seed_and_change_between_calls():
    def scores(seed: int) -> list[torch.Tensor]:
        model = nn.Sequential(PConv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), PLinear(6 * 4 * 4, 2))
        pruner = TaylorPruner(model, torch.zeros(1, 1, 6, 6), criterion=RandomScores(seed))
        return [pruner.scores()[0], pruner.scores()[0]]

    first, second = scores(3)
    assert torch.equal(first, scores(3)[0]) and not torch.equal(first, second)
    assert not torch.equal(first, scores(4)[0])
    assert ((first >= 0) & (first <= 1)).all()


def loss_of(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(inputs), labels))


@PROPERTY_SETTINGS
@given(net=conv_nets())
def test_the_oracle_is_the_loss_change_of_removing_each_unit(net):
    """Removal is masking (DESIGN.md rule 1), so the oracle's masked loss is the loss of the
    model with the unit physically removed."""
    model, example_shape = net
    inputs, labels = random_batch(model, example_shape)
    oracle = Oracle([(inputs[:3], labels[:3]), (inputs[3:], labels[3:])], absolute=False)
    pruner = TaylorPruner(model, inputs, criterion=oracle)
    changes = oracle.unit_changes(pruner)
    baseline = (loss_of(model, inputs[:3], labels[:3]) + loss_of(model, inputs[3:], labels[3:])) / 2
    prunable = pruner.channel_map.prunable
    for unit in range(pruner.channel_map.num_units):
        if not prunable[unit]:
            assert changes[unit] == 0
            continue
        removed = copy.deepcopy(pruner)
        removed.channel_map.remove(torch.tensor([unit]))
        without = (loss_of(removed.model, inputs[:3], labels[:3]) + loss_of(removed.model, inputs[3:], labels[3:])) / 2
        assert changes[unit] == pytest.approx(without - baseline, abs=1e-5)
    unnormalised = TaylorPruner(model, inputs, normalize=False, criterion=oracle)
    for chain, scores in zip(unnormalised.chains, unnormalised.scores()):
        torch.testing.assert_close(scores, changes[chain.units], atol=1e-6, rtol=1e-5)


def test_the_oracle_abs_ranks_absolute_changes_and_leaves_the_model_as_it_was():
    torch.manual_seed(1)
    model = nn.Sequential(PConv2d(1, 6, 3), PBatchNorm2d(6), nn.ReLU(), nn.Flatten(), PLinear(6 * 4 * 4, 3))
    inputs, labels = torch.randn(8, 1, 6, 6), torch.randint(3, (8,))
    model.train()
    oracle = Oracle([(inputs, labels)])
    pruner = TaylorPruner(model, inputs[:1], normalize=False, criterion=oracle)
    before = copy.deepcopy(model.state_dict())
    (scores,) = pruner.scores()
    torch.testing.assert_close(scores, oracle.unit_changes(pruner)[pruner.chains[0].units].abs())
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not module._forward_pre_hooks for module in model.modules())
    assert loss_of(model, inputs, labels) == pytest.approx(loss_of(copy.deepcopy(model), inputs, labels))


def test_the_oracle_needs_batches():
    with pytest.raises(ValueError, match="Oracle needs at least one batch"):
        Oracle([])


@pytest.mark.parametrize("criterion", RECORDED, ids=lambda criterion: criterion.name)
def test_pruning_without_recorded_values_names_the_criterion(criterion):
    model = nn.Sequential(PConv2d(1, 4, 3), PBatchNorm2d(4), nn.ReLU(), nn.Flatten(), PLinear(4 * 4 * 4, 2))
    pruner = TaylorPruner(model, torch.zeros(1, 1, 6, 6), criterion=criterion)
    with pytest.raises(RuntimeError, match=f"chain '0' has no {criterion.name} estimates yet"):
        pruner.prune(1)
    assert model[0].out_channels == 4


@pytest.mark.parametrize("criterion", RECORDED, ids=lambda criterion: criterion.name)
def test_prune_removes_the_lowest_scores_of_every_recorded_criterion(criterion):
    torch.manual_seed(2)
    model = nn.Sequential(PConv2d(1, 6, 3, padding=1), PBatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          PConv2d(6, 8, 3, padding=1), PBatchNorm2d(8), nn.ReLU(), nn.Flatten(), PLinear(8 * 9, 3))
    inputs, labels = torch.randn(10, 1, 6, 6), torch.randint(3, (10,))
    pruner = TaylorPruner(model, inputs[:1], criterion=criterion)
    accumulate_estimates(model, inputs, labels)
    scores = pruner.scores()
    flat = torch.cat(scores)
    lowest = set(flat.argsort(stable=True)[:3].tolist())
    removals = pruner.prune(3)
    offsets = {"0": 0, "4": len(scores[0])}
    removed = {offsets[removal.chain] + index for removal in removals for index in removal.indices}
    assert removed == lowest


class Residual(nn.Module):
    """A residual stream made by two batch norms: each of its units has two estimators."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = PConv2d(1, 4, 3, padding=1), PBatchNorm2d(4)
        self.conv2, self.bn2 = PConv2d(4, 4, 3, padding=1), PBatchNorm2d(4)
        self.head = PLinear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stream = self.bn1(self.conv1(x))
        stream = stream + self.bn2(self.conv2(F.relu(stream)))
        return self.head(F.relu(stream).mean(dim=(2, 3)))


def test_the_oracle_counts_a_unit_seen_by_several_estimators_once():
    torch.manual_seed(3)
    model = Residual()
    inputs, labels = torch.randn(6, 1, 5, 5), torch.randint(3, (6,))
    for layer in (model.bn1, model.bn2):  # batch norms that are not the identity in eval mode
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
    oracle = Oracle([(inputs, labels)], absolute=False)
    pruner = TaylorPruner(model, inputs[:1], normalize=False, criterion=oracle)
    assert {member.layer for member in pruner.estimator_members} == {model.bn1, model.bn2}
    (stream,) = [chain for chain in pruner.chains if model.bn2 in chain.layers]
    changes = oracle.unit_changes(pruner)
    (scores,) = [score for chain, score in zip(pruner.chains, pruner.scores()) if chain is stream]
    torch.testing.assert_close(scores, changes[stream.units])
    for unit in stream.units.tolist():
        removed = copy.deepcopy(pruner)
        removed.channel_map.remove(torch.tensor([unit]))
        assert changes[unit] == pytest.approx(loss_of(removed.model, inputs, labels) - loss_of(model, inputs, labels), abs=1e-5)


def test_activation_std_of_a_layer_without_positions_is_the_spread_over_the_batch():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), PLinear(12, 5), nn.ReLU(), PLinear(5, 2))
    inputs = torch.randn(7, 12)
    pruner = TaylorPruner(model, inputs[:1], criterion=ActivationStd())
    model.train()
    model(inputs).sum().backward()
    (member,) = pruner.estimator_members
    hidden = model[1](inputs).detach().clamp(min=0).double()
    expected = (hidden - hidden.mean(dim=0)).pow(2).mean(dim=0).sqrt()
    torch.testing.assert_close(member.layer.taylor_estimates, expected)
    assert (expected > 0).any()
