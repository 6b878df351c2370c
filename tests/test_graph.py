"""Channel labels through a ``torch.fx`` graph: random small programs of plain torch layers
(conv blocks, residual additions, concatenations, squeeze-and-excitation gates, depthwise and
grouped convolutions, subclasses of torch's layers as other libraries write them, modules with
per-channel state that fx cannot trace, and now and then an op the pruner does not understand) prune with
"removal = masking" holding after every round; and the patterns that must freeze do."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from torch import nn

from nets import (
    logits,
    prune_and_check_masking,
)
from prunable_nn import PLinear, PrunableLayer, TaylorPruner
from prunable_nn.kinds import NORM, register_layer

#: ``PRUNABLE_NN_GRAPH_EXAMPLES=2000`` for a longer search.
GRAPH_SETTINGS = settings(
    max_examples=int(os.environ.get("PRUNABLE_NN_GRAPH_EXAMPLES", "35")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MAX_CHANNELS = 12
RELU_STYLES = ("module", "module_inplace", "function", "function_inplace")
ADD_STYLES = ("plus", "torch.add", "add_")


# -- layers of other libraries, as they subclass torch's ----------------------------------------------
class BatchNormReLU(nn.BatchNorm2d):
    """Batch norm and ReLU in one module, like timm's ``BatchNormAct2d``: registered below."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


register_layer(BatchNormReLU, NORM)


class TaggedConv(nn.Conv2d):
    """A convolution subclass that only adds a method: it computes what ``nn.Conv2d`` does."""

    def describe_me(self) -> str:
        return f"conv {self.in_channels}->{self.out_channels}"


class ChannelSwapConv(nn.Conv2d):
    """A convolution subclass whose own forward mixes its output channels (not registered)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).roll(1, dims=1)


class GatedScale(nn.Module):
    """An unknown module with a per-channel parameter and data-dependent control flow, which
    fx cannot trace: it is kept whole."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * self.gamma.view(1, -1, 1, 1)
        return x


SUBCLASSES = ("batchnorm_relu", "tagged_conv", "channel_swap_conv", "gated_scale")


# -- random programs ------------------------------------------------------------------------------
class ProgramNet(nn.Module):
    """A forward written as a program over a list of values that starts with the input; each
    op appends one value. ``program`` holds tuples ``(kind, sources, options)``; the modules of
    op ``i`` are in ``self.ops[i]``. The head pools (or not), flattens, maybe runs a hidden
    Linear + ReLU, and ends with a Linear to 3 classes."""

    def __init__(self, in_channels: int, size: int, program: list[tuple], head: dict) -> None:
        super().__init__()
        self.program = tuple(program)
        self.head_options = dict(head)
        self.ops = nn.ModuleList()
        channels = [in_channels]
        for kind, sources, options in program:
            modules = nn.ModuleDict()
            first = channels[sources[0]]
            if kind == "conv":
                out = options["out"]
                modules["conv"] = nn.Conv2d(
                    first, out, options["k"], padding=options["k"] // 2, bias=options["bias"]
                )
                if options["bn"]:
                    modules["bn"] = nn.BatchNorm2d(out)
                if options["relu"].startswith("module"):
                    modules["relu"] = nn.ReLU(inplace=options["relu"] == "module_inplace")
                channels.append(out)
            elif kind == "add":
                channels.append(first)
            elif kind == "cat":
                channels.append(first + channels[sources[1]])
            elif kind == "se":
                modules["reduce"] = nn.Conv2d(first, options["reduce"], 1)
                modules["expand"] = nn.Conv2d(options["reduce"], first, 1)
                channels.append(first)
            elif kind == "spatial":
                modules["conv"] = nn.Conv2d(first, 1, 3, padding=1)
                channels.append(first)
            elif kind == "depthwise":
                modules["conv"] = nn.Conv2d(first, first, 3, padding=1, groups=first, bias=options["bias"])
                modules["bn"] = nn.BatchNorm2d(first)
                channels.append(first)
            elif kind == "grouped":
                out = options["out"]
                modules["conv"] = nn.Conv2d(
                    first, out, options["k"], padding=options["k"] // 2, groups=options["g"]
                )
                modules["relu"] = nn.ReLU()
                channels.append(out)
            elif kind == "bn":
                modules["bn"] = nn.BatchNorm2d(first, affine=options["affine"])
                channels.append(first)
            elif kind == "maxpool":
                channels.append(first)
            elif kind == "scale":
                self.register_parameter(f"scale{len(self.ops)}", nn.Parameter(torch.rand(1, first, 1, 1) + 0.5))
                channels.append(first)
            elif kind in ("shuffle", "flip"):
                channels.append(first)
            elif kind == "batchnorm_relu":
                modules["layer"] = BatchNormReLU(first)
                channels.append(first)
            elif kind == "tagged_conv":
                modules["layer"] = TaggedConv(first, options["out"], 3, padding=1)
                channels.append(options["out"])
            elif kind == "channel_swap_conv":
                modules["layer"] = ChannelSwapConv(first, options["out"], 1)
                channels.append(options["out"])
            elif kind == "gated_scale":
                modules["layer"] = GatedScale(first)
                channels.append(first)
            elif kind == "chunk":
                channels.append(first // 2)
            else:
                raise ValueError(kind)
            self.ops.append(modules)
        last = channels[-1]
        features = last if head["reduce"] in ("pool", "mean") else last * size * size
        if head["hidden"]:
            self.hidden = nn.Linear(features, head["hidden"])
            features = head["hidden"]
        self.classifier = nn.Linear(features, 3)
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x]
        for index, ((kind, sources, options), modules) in enumerate(zip(self.program, self.ops)):
            if kind == "scale":  # a fixed per-channel tensor (as in a layer scale)
                values.append(values[sources[0]] * getattr(self, f"scale{index}"))
                continue
            values.append(self._run(kind, [values[i] for i in sources], options, modules))
        out = values[-1]
        reduce = self.head_options["reduce"]
        if reduce == "pool":
            out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        elif reduce == "mean":
            out = out.mean((2, 3))
        elif reduce == "view":
            out = out.view(out.size(0), -1)
        else:
            out = out.flatten(1)
        if self.head_options["hidden"]:
            out = F.relu(self.hidden(out))
        return self.classifier(out)

    @staticmethod
    def _run(kind: str, inputs: list[torch.Tensor], options: dict, modules: nn.ModuleDict) -> torch.Tensor:
        x = inputs[0]
        if kind == "conv":
            y = modules["conv"](x)
            if options["bn"]:
                y = modules["bn"](y)
            if options["relu"].startswith("module"):
                return modules["relu"](y)
            return F.relu(y, inplace=options["relu"] == "function_inplace")
        if kind == "add":
            style = options["style"]
            if style == "plus":
                return x + inputs[1]
            if style == "torch.add":
                return torch.add(x, inputs[1])
            return x.clone().add_(inputs[1])
        if kind == "cat":
            return torch.cat([x, inputs[1]], 1)
        if kind == "se":
            gate = modules["expand"](F.relu(modules["reduce"](F.adaptive_avg_pool2d(x, 1))))
            return x * torch.sigmoid(gate)
        if kind == "spatial":  # a one-channel gate over the positions
            return x * torch.sigmoid(modules["conv"](x))
        if kind == "depthwise":
            return modules["bn"](modules["conv"](x))
        if kind == "grouped":
            return modules["relu"](modules["conv"](x))
        if kind == "bn":
            y = modules["bn"](x)
            return F.relu(y) if options["relu"] else y
        if kind == "maxpool":
            return F.max_pool2d(x, 3, stride=1, padding=1)
        if kind == "shuffle":
            n, c, h, w = x.shape
            g = options["g"]
            return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)
        if kind == "flip":
            return x.flip(1)
        if kind == "chunk":
            return torch.chunk(x, 2, 1)[0]
        if kind in SUBCLASSES:
            return modules["layer"](x)
        raise ValueError(kind)


def _source(draw: st.DrawFn, count: int) -> int:
    """A value index, the latest value half of the time (so most values reach the head)."""
    if draw(st.booleans()):
        return count - 1
    return draw(st.integers(0, count - 1))


def _width(draw: st.DrawFn, channels: list[int], multiple_of: int = 1) -> int:
    """A fresh width (2..6), or the channel count of an existing value (so adds can follow)."""
    existing = sorted({c for c in channels if c % multiple_of == 0 and c <= MAX_CHANNELS})
    fresh = [c for c in range(2, 7) if c % multiple_of == 0]
    if existing and draw(st.booleans()):
        return draw(st.sampled_from(existing))
    return draw(st.sampled_from(fresh))


@st.composite
def program_nets(draw: st.DrawFn) -> tuple[ProgramNet, torch.Tensor]:
    """A random :class:`ProgramNet` in double precision, and an input batch of 4."""
    torch.manual_seed(draw(st.integers(0, 2**16), label="seed"))
    in_channels = draw(st.integers(1, 3), label="in_channels")
    size = draw(st.integers(4, 6), label="size")
    channels = [in_channels]
    program = []
    kinds = (
        ["conv"] * 4
        + ["add"] * 3
        + ["cat"] * 2
        + ["se", "depthwise", "grouped"] * 2
        + ["bn", "maxpool", "unknown", "subclass"]
    )
    for step in range(draw(st.integers(1, 6), label="ops")):
        kind = "conv" if step == 0 else draw(st.sampled_from(kinds))
        src = _source(draw, len(channels))
        c = channels[src]
        if kind == "add":
            partners = [i for i, other in enumerate(channels) if other == c]
            if len(partners) < 2 and not draw(st.booleans()):
                kind = "conv"
            else:
                program.append(
                    ("add", (src, draw(st.sampled_from(partners))), {"style": draw(st.sampled_from(ADD_STYLES))})
                )
                channels.append(c)
                continue
        if kind == "cat":
            other = draw(st.integers(0, len(channels) - 1))
            if c + channels[other] <= MAX_CHANNELS:
                program.append(("cat", (src, other), {}))
                channels.append(c + channels[other])
                continue
            kind = "conv"
        if kind == "se" and draw(st.integers(0, 3)) == 0:
            program.append(("spatial", (src,), {}))
            channels.append(c)
            continue
        if kind == "se":
            program.append(("se", (src,), {"reduce": draw(st.integers(1, 3))}))
            channels.append(c)
            continue
        if kind == "depthwise":
            program.append(("depthwise", (src,), {"bias": draw(st.booleans())}))
            channels.append(c)
            continue
        if kind == "bn":
            program.append(("bn", (src,), {"affine": draw(st.booleans()), "relu": draw(st.booleans())}))
            channels.append(c)
            continue
        if kind == "maxpool":
            program.append(("maxpool", (src,), {}))
            channels.append(c)
            continue
        if kind == "grouped":
            # (groups == in_channels: depthwise, or a channel multiplier when out > in)
            groups = [g for g in (2, 3) if c % g == 0]
            if not groups:  # first a conv block of 4 or 6 channels
                out = draw(st.sampled_from([4, 6]))
                options = {"out": out, "k": 1, "bias": False, "bn": draw(st.booleans()), "relu": "module"}
                program.append(("conv", (src,), options))
                channels.append(out)
                src, groups = len(channels) - 1, [g for g in (2, 3) if out % g == 0]
            g = draw(st.sampled_from(groups))
            out = _width(draw, channels, multiple_of=g)
            program.append(("grouped", (src,), {"g": g, "out": out, "k": draw(st.sampled_from([1, 3]))}))
            channels.append(out)
            continue
        if kind == "subclass":
            which = draw(st.sampled_from(SUBCLASSES))
            out = _width(draw, channels) if which.endswith("conv") else c
            program.append((which, (src,), {"out": out}))
            channels.append(out)
            continue
        if kind == "unknown":
            choices = ["flip", "scale"] + ["shuffle"] * any(c % g == 0 for g in (2, 3)) + ["chunk"] * (c % 2 == 0)
            what = draw(st.sampled_from(choices))
            if what == "shuffle":
                g = draw(st.sampled_from([g for g in (2, 3) if c % g == 0]))
                program.append(("shuffle", (src,), {"g": g}))
                channels.append(c)
            elif what == "scale":
                program.append(("scale", (src,), {}))
                channels.append(c)
            elif what == "chunk":
                program.append(("chunk", (src,), {}))
                channels.append(c // 2)
            else:
                program.append(("flip", (src,), {}))
                channels.append(c)
            continue
        out = _width(draw, channels)
        options = {
            "out": out,
            "k": draw(st.sampled_from([1, 3])),
            "bias": draw(st.booleans()),
            "bn": draw(st.booleans()),
            "relu": draw(st.sampled_from(RELU_STYLES)),
        }
        program.append(("conv", (src,), options))
        channels.append(out)
    # Values that the output does not depend on (dead branches) stay half of the time;
    # otherwise every value reaches the head: a value that nothing reads is concatenated to the
    # last one (or, when that would be too wide, brought to its width by a 1x1 conv and added).
    keep_dead = draw(st.booleans(), label="keep_dead")
    for dead in range(1, len(channels) - 1):
        if keep_dead or any(dead in sources for _, sources, _ in program):
            continue
        last = len(channels) - 1
        if channels[dead] + channels[last] <= MAX_CHANNELS:
            program.append(("cat", (last, dead), {}))
            channels.append(channels[dead] + channels[last])
        else:
            options = {"out": channels[last], "k": 1, "bias": False, "bn": False, "relu": "function"}
            program.append(("conv", (dead,), options))
            program.append(("add", (last, last + 1), {"style": "plus"}))
            channels += [channels[last], channels[last]]
    head = {
        "reduce": draw(st.sampled_from(["pool", "mean", "flatten", "view"])),
        "hidden": draw(st.sampled_from([0, 0, 2, 4])),
    }
    net = ProgramNet(in_channels, size, program, head).double()
    inputs = torch.randn(4, in_channels, size, size, dtype=torch.float64)
    return net, inputs


def describe(net: ProgramNet) -> str:
    lines = [f"channels {net.channels}, head {net.head_options}"]
    lines += [f"  v{i + 1} = {kind}{sources} {options}" for i, (kind, sources, options) in enumerate(net.program)]
    return "\n".join(lines)


# -- the property ---------------------------------------------------------------------------------
@GRAPH_SETTINGS
@given(net_and_inputs=program_nets(), data=st.data())
def test_random_programs_prune_as_masking(net_and_inputs, data):
    net, inputs = net_and_inputs
    program = describe(net)
    note(program)
    with torch.no_grad():
        shape = net(inputs).shape
    pruner = TaylorPruner(net, inputs)
    assert all(isinstance(m, PrunableLayer) == (type(m) is not ChannelSwapConv) for m in net.modules() if isinstance(m, nn.Conv2d))
    assert all(isinstance(m, PrunableLayer) for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(isinstance(m, PLinear) for m in net.modules() if isinstance(m, nn.Linear))
    for _ in range(data.draw(st.integers(1, 3), label="rounds")):
        before = pruner.num_prunables
        if before == 0:
            break
        k = data.draw(st.integers(1, max(1, before)), label="max_to_prune")
        removals = prune_and_check_masking(net, pruner, inputs, k)
        removed = sum(len(removal.indices) for removal in removals)
        assert 1 <= removed <= k, program
        assert pruner.num_prunables == before - removed, program
        net.train()
        output = logits(net(inputs))
        assert output.shape == shape, program
        F.cross_entropy(output, torch.arange(len(inputs)) % 3).backward()
        assert all(
            parameter.grad is None or bool(torch.isfinite(parameter.grad).all()) for parameter in net.parameters()
        ), program


# -- helpers of the pattern tests -----------------------------------------------------------------
def frozen_reasons(pruner: TaylorPruner) -> dict[str, str]:
    return {frozen.name: frozen.reason for frozen in pruner.frozen}


def chain_names(pruner: TaylorPruner) -> list[str]:
    return [chain.name for chain in pruner.chains]


def prune_all_rounds(
    net: nn.Module, pruner: TaylorPruner, inputs: torch.Tensor, rounds: int = 2, k: int = 2
) -> int:
    """A few rounds of ``prune_and_check_masking``; returns the number of units removed."""
    removed = 0
    for _ in range(rounds):
        if pruner.num_prunables == 0:
            break
        removals = prune_and_check_masking(net, pruner, inputs, k)
        removed += sum(len(removal.indices) for removal in removals)
    return removed


def double_inputs(channels: int = 2, size: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, channels, size, size, generator=generator, dtype=torch.float64)


class Classifier(nn.Module):
    """Pool, flatten and a Linear to 3 classes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# -- frozen patterns ------------------------------------------------------------------------------
class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 5, 1)
        self.head = Classifier(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = F.relu(self.conv2(y))
        return self.head(F.relu(self.conv3(y)))


def test_channel_shuffle_freezes_the_chain_that_feeds_it():
    torch.manual_seed(0)
    net, inputs = ShuffleNet().double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    reasons = frozen_reasons(pruner)
    assert "conv1" in reasons and "view" in reasons["conv1"]
    assert "conv1" not in chain_names(pruner)
    assert chain_names(pruner) == ["conv2", "conv3"]
    assert not net.conv1.estimating and not net.bn1.estimating
    assert prune_all_rounds(net, pruner, inputs, rounds=3, k=3) > 0
    assert (net.conv1.out_channels, net.bn1.num_features, net.conv2.in_channels) == (4, 4, 4)
    assert net.conv2.out_channels < 6 or net.conv3.out_channels < 5


class UnknownOpNet(nn.Module):
    """conv1, then an op that mixes or drops channels (or scales them by a fixed tensor), then
    conv2 and a classifier."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)
        self.conv2 = nn.Conv2d(4, 5, 1)
        self.head = Classifier(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        if self.op == "flip":
            y = y.flip(1)
        elif self.op == "slice":
            y = torch.cat([y[:, 2:], y[:, :2]], 1)
        elif self.op == "scale":
            y = y * self.scale
        elif self.op == "channel mean":
            y = y - y.mean(1, keepdim=True)
        return self.head(F.relu(self.conv2(y)))


@pytest.mark.parametrize(
    "op, why",
    [
        ("flip", "flip"),
        ("slice", "indexing of the channels"),
        ("scale", "fixed per-channel tensor"),
        ("channel mean", "mean"),
    ],
)
def test_ops_that_mix_drop_or_scale_channels_freeze_them(op, why):
    torch.manual_seed(0)
    net, inputs = UnknownOpNet(op).double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    reasons = frozen_reasons(pruner)
    assert "conv1" in reasons and why in reasons["conv1"], reasons
    assert chain_names(pruner) == ["conv2"]
    assert prune_all_rounds(net, pruner, inputs, rounds=2, k=2) == 4
    assert net.conv1.out_channels == 4


class FeatureMapNet(nn.Module):
    """Returns a conv's feature map (a dense-prediction head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


def test_channels_that_reach_the_output_are_frozen():
    torch.manual_seed(0)
    net, inputs = FeatureMapNet().double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    reasons = frozen_reasons(pruner)
    assert list(reasons) == ["conv2"] and "output" in reasons["conv2"]
    assert chain_names(pruner) == ["conv1"]
    assert pruner.num_prunables == 4
    net.train()
    net(inputs).square().mean().backward()
    reference = copy.deepcopy(net)
    removals = pruner.prune(2)
    assert [removal.chain for removal in removals] == ["conv1"]
    assert net.conv2.out_channels == 3 and net.conv1.out_channels == 3
    (removal,) = removals
    assert sorted(removal.inputs) == ["conv2"] and len(removal.inputs["conv2"]) == 2
    with torch.no_grad():  # conv2 reads the removed channels: zero them there
        reference.eval()
        hidden = F.relu(reference.bn1(reference.conv1(inputs)))
        hidden[:, list(removal.inputs["conv2"])] = 0
        expected = reference.conv2(hidden)
        torch.testing.assert_close(net.eval()(inputs), expected)
        assert expected.shape == (4, 3, 5, 5)


class SignGate(nn.Module):
    """Data-dependent control flow: ``torch.fx`` cannot trace it. Holds a conv of its own."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return F.relu(self.mix(x))
        return -x


class OpaqueNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.gate = SignGate(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 5, 1)
        self.head = Classifier(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gate(F.relu(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return self.head(F.relu(self.conv3(y)))


def test_an_untraceable_submodule_is_kept_whole_and_freezes_what_enters_it():
    torch.manual_seed(0)
    net, inputs = OpaqueNet().double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    assert [module.name for module in pruner.opaque] == ["gate"]
    reasons = frozen_reasons(pruner)
    assert "conv1" in reasons and "gate" in reasons["conv1"]
    assert chain_names(pruner) == ["conv2", "conv3"]
    layers = {layer for chain in pruner.chains for layer in chain.layers}
    assert net.gate.mix not in layers and not net.gate.mix.estimating
    report = pruner.report()
    assert "gate" in report and "kept whole" in report
    assert prune_all_rounds(net, pruner, inputs, rounds=3, k=3) > 0
    kept = (net.conv1.out_channels, net.gate.mix.in_channels, net.gate.mix.out_channels, net.conv2.in_channels)
    assert kept == (4, 4, 4, 4)


class ChannelsLastNet(nn.Module):
    """A LayerNorm over the channels after a permute (as in ConvNeXt) and Linears that read
    the channels on the last dim."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.norm = norm
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1)
        self.ln = nn.LayerNorm(5)
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 4)
        self.head = Classifier(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x)).permute(0, 2, 3, 1)
        if self.norm:
            y = self.ln(y)
        y = self.fc2(F.relu(self.fc1(y)))
        return self.head(F.relu(y.permute(0, 3, 1, 2)))


def test_a_layer_norm_over_the_channels_freezes_them():
    torch.manual_seed(0)
    net, inputs = ChannelsLastNet(norm=True).double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    reasons = frozen_reasons(pruner)
    assert "conv1" in reasons and "LayerNorm" in reasons["conv1"]
    assert chain_names(pruner) == ["fc1", "fc2"]
    assert prune_all_rounds(net, pruner, inputs, rounds=2, k=3) > 0
    assert (net.conv1.out_channels, net.ln.normalized_shape, net.fc1.in_features) == (5, (5,), 5)


def test_linears_after_a_permute_read_the_channels_on_the_last_dim():
    torch.manual_seed(0)
    net, inputs = ChannelsLastNet(norm=False).double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    assert chain_names(pruner) == ["conv1", "fc1", "fc2"]
    assert [(c.layer.name_in_model, c.features_per_channel) for c in pruner.chains[0].consumers] == [("fc1", 1)]
    assert pruner.num_prunables == 4 + 5 + 3
    assert prune_all_rounds(net, pruner, inputs, rounds=3, k=4) > 0
    assert net.fc1.in_features == net.conv1.out_channels
    assert net.fc2.in_features == net.fc1.out_features


class ViewNet(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1, stride=2)  # 5x5 -> 3x3: 18 features
        self.fc1 = nn.Linear(18, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv2(F.relu(self.conv1(x))))
        if self.how == "view -1":
            y = y.view(y.size(0), -1)
        elif self.how == "reshape -1":
            y = y.reshape(y.shape[0], -1)
        elif self.how == "view 4, 18":
            y = y.view(4, 18)
        elif self.how == "view -1, 18":
            y = y.view(-1, 18)
        return self.fc2(F.relu(self.fc1(y)))


@pytest.mark.parametrize("how", ["view -1", "reshape -1"])
def test_a_view_that_keeps_the_batch_and_flattens_the_rest_works_like_flatten(how):
    torch.manual_seed(0)
    net, inputs = ViewNet(how).double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    assert chain_names(pruner) == ["conv1", "conv2", "fc1"]
    assert [(c.layer.name_in_model, c.features_per_channel) for c in pruner.chains[1].consumers] == [("fc1", 9)]
    assert pruner.num_prunables == 2 + 1 + 3
    removed = prune_all_rounds(net, pruner, inputs, rounds=3, k=2)
    assert removed > 0 and pruner.num_prunables == 6 - removed
    assert net.fc1.in_features == 9 * net.conv2.out_channels


@pytest.mark.parametrize("how", ["view 4, 18", "view -1, 18"])
def test_a_view_with_the_sizes_written_out_freezes(how):
    torch.manual_seed(0)
    net, inputs = ViewNet(how).double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    reasons = frozen_reasons(pruner)
    assert "conv2" in reasons and "view" in reasons["conv2"]
    assert chain_names(pruner) == ["conv1", "fc1"]
    assert prune_all_rounds(net, pruner, inputs, rounds=3, k=2) > 0
    assert (net.conv2.out_channels, net.fc1.in_features) == (2, 18)


class SharedConvNet(nn.Module):
    """One conv called twice: on two different values (``parallel``) or on its own output."""

    def __init__(self, parallel: bool) -> None:
        super().__init__()
        self.parallel = parallel
        self.conv_a = nn.Conv2d(2, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(2, 4, 1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = Classifier(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv_a(x))
        if self.parallel:
            y = F.relu(self.shared(a))
            z = F.relu(self.shared(F.relu(self.conv_b(x))))
        else:
            y = F.relu(self.shared(a))
            z = F.relu(self.bn(self.shared(y)))
        return self.head(torch.cat([y, z], 1))


@pytest.mark.parametrize("parallel", [True, False], ids=["two-values", "own-output"])
def test_a_conv_called_twice_prunes_consistently(parallel):
    torch.manual_seed(0)
    net, inputs = SharedConvNet(parallel).double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    for _ in range(3):
        if pruner.num_prunables == 0:
            break
        prune_and_check_masking(net, pruner, inputs, 2)
        net.train()
        net(inputs).sum().backward()
    assert net.shared.in_channels == net.conv_a.out_channels
    if parallel:
        assert net.conv_b.out_channels == net.conv_a.out_channels  # both feed the same inputs
    else:
        assert net.shared.out_channels == net.shared.in_channels == net.bn.num_features
    assert net.head.fc.in_features == 2 * net.shared.out_channels


# -- the report -----------------------------------------------------------------------------------
class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = F.relu(self.stem_bn(self.stem(x)))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(stem)))))
        y = F.relu(y + stem)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def chain_line(report: str, name: str) -> str:
    (line,) = [line for line in report.splitlines() if line.strip().startswith(f"{name}:")]
    return line


def test_report_lists_chains_sizes_layers_and_frozen_reasons():
    torch.manual_seed(0)
    net, inputs = ResidualNet().double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    assert chain_names(pruner) == ["stem", "conv1"]
    report = pruner.report()
    assert "2 chains" in report and f"{pruner.num_prunables} prunable" in report and pruner.num_prunables == 3 + 5
    stem = chain_line(report, "stem")
    assert "4 channels" in stem
    for layer in ("stem", "stem_bn", "conv2", "bn2", "conv1", "fc"):
        assert layer in stem
    block = chain_line(report, "conv1")
    assert "6 channels" in block and "bn1" in block and "conv2" in block
    assert "stem_bn" not in block
    frozen = chain_line(report, "fc")
    assert "output" in frozen
    assert "kept whole" not in report

    removals = prune_and_check_masking(net, pruner, inputs, 3)
    left = {"stem": 4, "conv1": 6}
    for removal in removals:
        left[removal.chain] -= len(removal.indices)
    report = pruner.report()
    assert f"{left['stem']} channels" in chain_line(report, "stem")
    assert f"{left['conv1']} channels" in chain_line(report, "conv1")
    assert f"{pruner.num_prunables} prunable" in report


# -- dead branches and channel multipliers -------------------------------------------------------
class DeadBranchNet(nn.Module):
    """``forward`` computes a value that its output does not depend on (``ending``: the last
    op of that branch: none, a plain ReLU, or one that works in place)."""

    def __init__(self, ending: str = "none") -> None:
        super().__init__()
        self.ending = ending
        self.conv_a = nn.Conv2d(2, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.conv_c = nn.Conv2d(2, 5, 3, padding=1)
        self.head = Classifier(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unused = self.conv_b(F.relu(self.conv_a(x)))
        if self.ending == "relu":
            F.relu(unused)
        elif self.ending == "relu inplace":
            F.relu(unused, inplace=True)
        elif self.ending == "add_":
            unused.add_(1.0)
        return self.head(F.relu(self.conv_c(x)))


# "relu inplace" and "add_" raised "chain 'conv_a' has no Taylor estimates yet" at prune()
# while graph._live_nodes counted every op that works in place as live.
@pytest.mark.parametrize("ending", ["none", "relu", "relu inplace", "add_"])
def test_a_dead_branch_does_not_stop_prune(ending):
    torch.manual_seed(0)
    net, inputs = DeadBranchNet(ending).double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    assert chain_names(pruner) == ["conv_c"]
    assert not net.conv_a.estimating and not net.conv_b.estimating
    assert prune_all_rounds(net, pruner, inputs, rounds=2, k=2) == 4
    assert (net.conv_a.out_channels, net.conv_b.in_channels, net.conv_c.out_channels) == (4, 4, 1)


class DeadReaderNet(nn.Module):
    """A dead branch that reads a chain the output needs: it still runs in every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.side = nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        unused = self.side(y)  # noqa: F841 (dead on purpose)
        return self.fc(y.mean((2, 3)))


# Failed while graph._Walk.run skipped dead nodes: 'side' was no reader of chain conv1, kept
# its 4 inputs, and the next forward raised "expected input ... to have 4 channels".
def test_a_dead_branch_that_reads_a_pruned_chain_still_runs():
    torch.manual_seed(0)
    net, inputs = DeadReaderNet().double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    assert chain_names(pruner) == ["conv1"]
    assert [consumer.layer for consumer in pruner.chains[0].consumers] == [net.side, net.fc]
    assert not net.side.estimating
    assert prune_all_rounds(net, pruner, inputs, rounds=2, k=2) == 3
    assert net.side.in_channels == net.conv1.out_channels == net.fc.in_features == 1
    net.train()
    net(inputs).sum().backward()


class ChannelMultiplierNet(nn.Module):
    """A depthwise conv with a channel multiplier of 2 (groups == in_channels == 2, 4 outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 1)
        self.dw = nn.Conv2d(2, 4, 3, padding=1, groups=2)
        self.conv2 = nn.Conv2d(4, 5, 1)
        self.head = Classifier(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.dw(F.relu(self.conv1(x))))
        return self.head(F.relu(self.conv2(y)))


# Raised KeyError in ChannelMap.__init__ while graph._Walk._find_estimators made the
# multiplier conv (frozen by _unknown, no output member) the estimator of conv2's input.
def test_a_depthwise_conv_with_a_channel_multiplier_is_frozen_and_the_rest_prunes():
    torch.manual_seed(0)
    net, inputs = ChannelMultiplierNet().double(), double_inputs()
    pruner = TaylorPruner(net, inputs)
    reasons = frozen_reasons(pruner)
    assert "conv1" in reasons and "multiplier" in reasons["conv1"]
    assert chain_names(pruner) == ["conv2"]
    assert prune_all_rounds(net, pruner, inputs, rounds=2, k=2) == 4
    assert (net.conv1.out_channels, net.dw.in_channels, net.dw.out_channels, net.conv2.in_channels) == (2, 2, 4, 4)
