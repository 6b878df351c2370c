"""What a layer's estimate reads when the model writes into its output in place.

After an addition (``out += identity``) it reads the sum ``v``, the residual stream the
readers see, with ``dL/dv`` (which is ``dL/da``). After a product or quotient (``out *=
gate``, ``out.mul_(gain)``) or a squashing activation (``out.sigmoid_()``) the overwritten
value would carry the factor twice, so the layer records a copy and reads ``a * dL/da``
(for a product, that is also ``v * dL/dv``). The reference is written out with plain torch
and ``torch.autograd.grad``; eagerly and compiled alike.
"""

from __future__ import annotations

import copy
import operator

import pytest
import torch
from torch import nn

from prunable_nn import TaylorPruner
from prunable_nn.trace import trace
from prunable_nn.writes import InPlaceWrite, in_place_writes

DOUBLE = torch.float64

#: How the block writes into its batch norm's output ``out`` (``other``: the shortcut for the
#: additions, a positive gate for the rest), and whether the estimate then reads the sum.
#: ``leaky_relu(out).mul_(other)``: an activation module alone reads the output, and the model
#: then writes into the activation's output, which the layer would otherwise record (it costs
#: no memory; a ReLU keeps its output for its backward, a leaky one its input).
WRITES = {
    "out += other": (operator.iadd, True),
    "out -= other": (operator.isub, True),
    "out.add_(other)": (lambda out, other: out.add_(other), True),
    "out *= other": (operator.imul, False),
    "out /= other": (operator.itruediv, False),
    "out.mul_(other)": (lambda out, other: out.mul_(other), False),
    "out.div_(other)": (lambda out, other: out.div_(other), False),
    "out.sigmoid_()": (lambda out, other: out.sigmoid_(), False),
    "leaky_relu(out).mul_(other)": (lambda out, other: out.mul_(other), False),
}


class Block(nn.Module):
    """``conv0 -> conv1 -> bn``, the write into the batch norm's output, ``relu -> head``."""

    def __init__(self, write: str) -> None:
        super().__init__()
        self.write = write
        self.conv0 = nn.Conv2d(3, 4, 1, dtype=DOUBLE)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, dtype=DOUBLE)
        self.bn = nn.BatchNorm2d(4, dtype=DOUBLE)
        self.relu = nn.ReLU()
        self.leaky_relu = nn.LeakyReLU(0.1)
        self.gate = nn.Conv2d(4, 4, 1, dtype=DOUBLE)
        self.head = nn.Conv2d(4, 3, 1, dtype=DOUBLE)

    def other(self, x: torch.Tensor) -> torch.Tensor:
        return x if WRITES[self.write][1] else 0.5 + 2 * torch.sigmoid(self.gate(x))

    def written(self, out: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        if self.write.startswith("leaky_relu"):
            out = self.leaky_relu(out)
        return WRITES[self.write][0](out, other)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)
        out = self.written(self.bn(self.conv1(x)), self.other(x))
        return self.head(self.relu(out))


def expected_bn_estimate(model: Block, x: torch.Tensor) -> torch.Tensor:
    """eq. 8 of the batch norm, on a copy of the plain block: ``a * dL/da``, or ``v * dL/dv``
    of the value ``v`` left after an in-place addition."""
    twin = copy.deepcopy(model)
    inputs = twin.conv0(x)
    a = twin.bn(twin.conv1(inputs))
    v = twin.written(a.clone(), twin.other(inputs))
    read = v if WRITES[model.write][1] else a
    grad = torch.autograd.grad(twin.head(twin.relu(v)).square().mean(), read)[0]
    return (read * grad).mean(dim=(2, 3)).abs().mean(dim=0).detach()


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_estimate_reads_what_the_in_place_write_leaves_as_it_should(write, compiled):
    torch.manual_seed(0)
    model, x = Block(write), torch.randn(3, 3, 5, 5, dtype=DOUBLE)
    expected = expected_bn_estimate(model, x)
    TaylorPruner(model, x)
    assert model.bn.estimating
    torch._dynamo.reset()
    net = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
    net(x).square().mean().backward()
    assert model.bn.examples_seen == 3
    torch.testing.assert_close(model.bn.taylor_estimates, expected)


class Writes(nn.Module):
    """Three values written into in place: ``a`` added into then multiplied, ``b`` clamped
    in place and multiplied through the clamp's result, ``c`` added into; ``d`` only clamped."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, b, c, d = x + 1, x + 2, x + 3, x + 4
        a += x
        a *= x
        b.relu_().mul_(x)
        c.add_(x)
        d.clamp_(0, 1)
        return a, b, c, d


def test_a_write_reaches_the_value_through_in_place_results_and_an_overwrite_outweighs_an_addition():
    graph, _ = trace(Writes(), torch.randn(2, 3, 4, 4))
    writes = {node.name: write for node, write in in_place_writes(graph, {}, []).items()}
    assert writes.pop("add") is writes.pop("iadd") is InPlaceWrite.OVERWRITE  # a, then a += x
    assert writes.pop("add_1") is writes.pop("relu_") is InPlaceWrite.OVERWRITE  # b, then b.relu_()
    assert writes.pop("add_2") is InPlaceWrite.ADDITION  # c
    assert writes == {}  # d, clamped only
