"""Operations of other code taught to the walk: ``declare_channelwise`` makes a function, a
tensor method or a module class carry the channels (and removal still equals masking),
``declare_opaque`` makes the channels it reads and makes stay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nets import prune_rounds_and_check_masking
from prunable_nn import TaylorPruner, declare_channelwise, declare_opaque
from prunable_nn import ops

DOUBLE = torch.float64


@pytest.fixture(autouse=True)
def own_rules():
    """Each test declares for itself: the rule tables are as they were afterwards."""
    tables = (ops.MODULE_RULES, ops.FUNCTION_RULES, ops.METHOD_RULES)
    saved = [dict(table) for table in tables]
    yield
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)


class CheckedSwish(nn.Module):
    """``x * sigmoid(x)`` after a check of its input: fx cannot trace a branch on values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(x).all():
            raise ValueError("non-finite activations")
        return x * torch.sigmoid(x)


class Net(nn.Module):
    """``conv -> bn -> (the activation) -> conv -> pool -> linear``, with the activation a
    function, a tensor method or a module."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.conv1 = nn.Conv2d(3, 6, 3, dtype=DOUBLE)
        self.bn = nn.BatchNorm2d(6, dtype=DOUBLE)
        self.swish = CheckedSwish()
        self.conv2 = nn.Conv2d(6, 5, 3, dtype=DOUBLE)
        self.fc = nn.Linear(5, 3, dtype=DOUBLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv1(x))
        if self.activation == "function":
            x = torch.erf(x)
        elif self.activation == "method":
            x = x.erf()
        else:
            x = self.swish(x)
        return self.fc(self.conv2(x).mean(dim=(2, 3)))


DECLARED = {"function": torch.erf, "method": "erf", "module": CheckedSwish}


@pytest.mark.parametrize("activation", list(DECLARED))
def test_a_declared_channelwise_operation_carries_the_channels_and_pruning_still_equals_masking(activation):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8, dtype=DOUBLE)
    before = TaylorPruner(Net(activation), x)
    assert [chain.num_channels for chain in before.chains] == [5]  # conv1's stay: not known to keep them apart
    assert "is not known to keep channels apart" in before.report()
    declare_channelwise(DECLARED[activation])
    model = Net(activation)
    pruner = TaylorPruner(model, x)
    assert sorted(chain.num_channels for chain in pruner.chains) == [5, 6]
    prune_rounds_and_check_masking(model, pruner, x)


def test_a_function_declared_opaque_freezes_what_it_reads_and_makes():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8, dtype=DOUBLE)
    declare_channelwise(torch.erf)
    assert sorted(chain.num_channels for chain in TaylorPruner(Net("function"), x).chains) == [5, 6]
    declare_opaque(torch.erf)
    pruner = TaylorPruner(Net("function"), x)
    assert [chain.num_channels for chain in pruner.chains] == [5]
    assert "'erf' (erf) is not known to keep channels apart" in pruner.report()


def test_a_module_class_declared_opaque_is_kept_whole():
    """timm's ``BatchNormAct2d``-like modules are traced through unless declared: declared
    opaque, an activation module the walk knows is a leaf whose channels stay."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8, dtype=DOUBLE)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, dtype=DOUBLE), nn.GELU(), nn.Conv2d(6, 4, 3, dtype=DOUBLE))
    assert [chain.num_channels for chain in TaylorPruner(model, x).chains] == [6]
    declare_opaque(nn.GELU)
    pruner = TaylorPruner(model, x)
    assert pruner.chains == [] and "GELU" in pruner.report()


def test_what_is_not_an_operation_is_refused():
    with pytest.raises(TypeError, match="a function, a tensor method's name or a module class, got 3"):
        declare_channelwise(3)
