"""Every layer kind, one layer at a time, against masking (hypothesis): convolutions of 1 to 3
dims, plain and transposed, grouped and depthwise; batch and instance norms of 1 to 3 dims;
group norms; and per-channel layers of your own. Removing output channels ``D`` gives the
layer's outputs without ``D``; removing input channels ``D`` computes what the layer computes
with ``D`` zeroed; a per-channel layer removes both at once. Every parameter stays the same
object, its gradient and the optimizer's momentum follow, and a drop the layer cannot take
is refused before anything changes."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

from prunable_nn import (
    PBatchNorm1d,
    PBatchNorm3d,
    PConv1d,
    PConv3d,
    PConvTranspose1d,
    PConvTranspose2d,
    PConvTranspose3d,
    PGroupNorm,
    PInstanceNorm1d,
    PInstanceNorm2d,
    PInstanceNorm3d,
    PrunableLayer,
    TaylorPruner,
    convert,
    load_pruned,
    save_pruned,
)
from prunable_nn.kinds import PerChannel, register_layer, twin_class
from nets import prune_and_check_masking

DOUBLE = torch.float64
assert_equal = functools.partial(assert_close, rtol=1e-10, atol=1e-12)
CONVS = {1: PConv1d, 2: nn.Conv2d, 3: PConv3d}
TRANSPOSED = {1: PConvTranspose1d, 2: PConvTranspose2d, 3: PConvTranspose3d}


def twin(module: nn.Module) -> PrunableLayer:
    if isinstance(module, PrunableLayer):
        return module
    return twin_class(module).from_module(module)


def randomized(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        for tensor in layer.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    return layer


def run(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)


def train_step(layer: PrunableLayer, x: torch.Tensor) -> torch.optim.Optimizer:
    """One backward pass and SGD step with momentum: gradients, momentum and estimates exist."""
    optimizer = torch.optim.SGD([*layer.parameters()] or [nn.Parameter(torch.zeros(1))], lr=0.01, momentum=0.9)
    out = layer(x.detach().requires_grad_())
    (out * torch.randn_like(out)).sum().backward()
    optimizer.step()
    return optimizer


@st.composite
def convolutions(draw: st.DrawFn) -> tuple[PrunableLayer, torch.Tensor]:
    """A random convolution of 1 to 3 dims, maybe transposed, with 1 to 3 groups (or
    depthwise), and an input batch."""
    dims = draw(st.integers(1, 3), label="dims")
    transposed = draw(st.booleans(), label="transposed")
    depthwise = draw(st.booleans(), label="depthwise")
    groups = draw(st.integers(1, 3), label="groups")
    if depthwise:
        groups = draw(st.integers(2, 5))
        cin = cout = 1
    else:
        cin, cout = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    in_channels, out_channels = groups * cin, groups * cout
    if in_channels * out_channels == 1:
        out_channels = cout = 2 * groups
    kernel = draw(st.integers(1, 3))
    padding = draw(st.integers(0, (kernel - 1) // 2 if transposed else 1))  # a transposed output must not vanish
    options = {"stride": draw(st.integers(1, 2)), "padding": padding, "bias": draw(st.booleans())}
    torch.manual_seed(draw(st.integers(0, 1000)))
    cls = (TRANSPOSED if transposed else CONVS)[dims]
    layer = twin(randomized(cls(in_channels, out_channels, kernel, groups=groups, dtype=DOUBLE, **options)))
    x = torch.randn(2, in_channels, *[draw(st.integers(kernel + 1, 5))] * dims, dtype=DOUBLE)
    return layer, x


def positions(data: st.DataObject, layer: PrunableLayer, count: int, side: str) -> list[int]:
    """Channels to drop that the layer can take: the same positions of every group where
    its groups must stay alike (the graph ties them so), whole positions of each group."""
    groups = layer.groups if layer.groups > 1 and not layer.is_depthwise else 1
    per_group = count // groups
    if per_group < 2:
        return []
    chosen = data.draw(st.lists(st.integers(0, per_group - 1), min_size=1, max_size=per_group - 1, unique=True))
    return sorted(group * per_group + p for group in range(groups) for p in chosen)


@settings(max_examples=60, deadline=None)
@given(case=convolutions(), data=st.data(), side=st.sampled_from(["output", "input"]))
def test_a_convolution_drops_channels_as_masking_says(case, data, side):
    layer, x = case
    optimizer = train_step(layer, x)
    weight = layer.weight
    owns = layer.is_depthwise
    count = layer.out_channels if side == "output" else layer.in_channels
    drop = positions(data, layer, count, side)
    if not drop:
        return
    keep = torch.tensor([c for c in range(count) if c not in drop])
    if owns:  # input and output channel k go together
        expected, inputs = run(layer, x)[:, keep], x[:, keep]
    elif side == "output":
        expected, inputs = run(layer, x)[:, keep], x
    else:
        masked = x.clone()
        masked[:, drop] = 0
        expected, inputs = run(layer, masked), x[:, keep]
    getattr(layer, f"drop_{side}")(drop, optimizer)
    assert_equal(run(layer, inputs), expected)
    assert layer.weight is weight
    assert weight.grad.shape == weight.shape
    assert optimizer.state[weight]["momentum_buffer"].shape == weight.shape
    optimizer.step()  # training goes on


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: PBatchNorm1d(5, dtype=DOUBLE), (4, 5)),
        (lambda: PBatchNorm1d(5, dtype=DOUBLE), (4, 5, 3)),
        (lambda: PBatchNorm3d(5, dtype=DOUBLE), (4, 5, 2, 3, 2)),
        (lambda: PInstanceNorm1d(5, affine=True, dtype=DOUBLE), (4, 5, 6)),
        (lambda: PInstanceNorm2d(5, affine=True, track_running_stats=True, dtype=DOUBLE), (4, 5, 3, 3)),
        (lambda: PInstanceNorm3d(5, dtype=DOUBLE), (4, 5, 2, 3, 2)),
        (lambda: PGroupNorm(5, 5, dtype=DOUBLE), (4, 5, 3, 3)),
    ],
    ids=["bn1d (N,C)", "bn1d (N,C,L)", "bn3d", "instance1d", "instance2d, running stats", "instance3d, plain", "group norm of 1"],
)
def test_a_per_channel_norm_drops_its_channels_in_both_modes(make, shape):
    torch.manual_seed(0)
    layer = randomized(make())
    x = torch.randn(*shape, dtype=DOUBLE)
    train_step(layer, x)
    keep = torch.tensor([0, 2, 4])
    for training in (False, True):  # each mode on copies: training moves the running statistics
        reference, pruned = copy.deepcopy(layer).train(training), copy.deepcopy(layer)
        pruned.drop_output([1, 3])
        assert_equal(run(pruned.train(training), x[:, keep]), run(reference, x)[:, keep])
        assert pruned.taylor_estimates.shape == (3,)


def test_a_group_norm_drops_whole_groups_only():
    torch.manual_seed(0)
    layer = randomized(PGroupNorm(3, 6, dtype=DOUBLE))
    x = torch.randn(4, 6, 3, 3, dtype=DOUBLE)
    reference = run(layer, x)
    before = {key: value.clone() for key, value in layer.state_dict().items()}
    with pytest.raises(ValueError, match=r"PGroupNorm.*groups \[1\] would lose some of their 2 channels"):
        layer.drop_output([2])
    assert all(torch.equal(value, before[key]) for key, value in layer.state_dict().items())
    layer.drop_output([2, 3])
    assert (layer.num_groups, layer.num_channels) == (2, 4)
    keep = torch.tensor([0, 1, 4, 5])
    assert_equal(run(layer, x[:, keep]), reference[:, keep])


# -- whole networks ---------------------------------------------------------------------------
class Net1d(nn.Module):
    """A 1-D convolutional net (audio, time series) with batch and group norms and a transposed conv."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(2, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(8, 12, 3, padding=1, groups=4), nn.GroupNorm(6, 12), nn.ReLU(),
            nn.ConvTranspose1d(12, 6, 2, stride=2), nn.InstanceNorm1d(6, affine=True), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        )
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class UNet2d(nn.Module):
    """An encoder and a decoder that upsamples with transposed convolutions and concatenates skips."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU())
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2, groups=2)
        self.out = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down1(x)
        return self.out(torch.cat([skip, self.up(self.down2(skip))], 1)).mean((2, 3))


class Net3d(nn.Module):
    """A small video net of 3-D convolutions, batch norms and a depthwise 3-D convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 8, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(8), nn.ReLU(),
            nn.Conv3d(8, 8, 3, padding=1, groups=8), nn.BatchNorm3d(8), nn.ReLU(),
            nn.Conv3d(8, 12, 1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        )
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.mark.parametrize(
    "make, shape",
    [(Net1d, (4, 2, 16)), (UNet2d, (4, 1, 8, 8)), (Net3d, (4, 3, 4, 6, 6))],
    ids=["1-d", "u-net with transposed convs", "3-d"],
)
def test_networks_of_every_kind_prune_as_masking_says(make, shape):
    torch.manual_seed(0)
    net = make().double()
    inputs = torch.randn(*shape, dtype=DOUBLE)
    pruner = TaylorPruner(net, inputs)
    assert not any(type(m) in (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.GroupNorm)
                   for m in net.modules())
    total = pruner.num_prunables
    assert total > 0, pruner.report()
    removed = 0
    for _ in range(3):
        removed += sum(len(r.indices) for r in prune_and_check_masking(net, pruner, inputs, max(2, total // 8)))
    assert removed >= 0.1 * total
    assert pruner.num_prunables == total - removed


# -- layers of your own -----------------------------------------------------------------------
class ChannelScale(nn.Module):
    """A learnable scale per channel, as in a layer scale: ``x * gamma``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


def scaled_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), ChannelScale(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).double()


def test_a_registered_per_channel_layer_prunes_where_it_froze_before():
    inputs = torch.randn(4, 2, 5, 5, dtype=DOUBLE)
    before = TaylorPruner(scaled_net(), inputs)
    assert "fixed per-channel tensor" in before.report()
    register_layer(ChannelScale, PerChannel(tensors=("gamma",)))
    net = scaled_net()
    pruner = TaylorPruner(net, inputs)
    assert isinstance(net[1], ChannelScale) and isinstance(net[1], PrunableLayer)
    assert pruner.num_prunables == before.num_prunables + 5
    prune_and_check_masking(net, pruner, inputs, max_to_prune=pruner.num_prunables)
    assert net[1].gamma.shape == (net[0].out_channels,) == (1,)


def test_convert_makes_twins_of_every_kind():
    net = convert(Net1d())
    assert [type(m).__name__ for m in net.features if isinstance(m, PrunableLayer)] == [
        "PConv1d", "PBatchNorm1d", "PConv1d", "PGroupNorm", "PConvTranspose1d", "PInstanceNorm1d",
    ]


@pytest.mark.parametrize("make, shape", [(Net1d, (4, 2, 16)), (UNet2d, (4, 1, 8, 8)), (Net3d, (4, 3, 4, 6, 6))],
                         ids=["1-d", "u-net", "3-d"])
def test_a_pruned_network_of_every_kind_saves_and_loads_into_a_fresh_one(make, shape, tmp_path):
    torch.manual_seed(0)
    net = make().double()
    inputs = torch.randn(*shape, dtype=DOUBLE)
    pruner = TaylorPruner(net, inputs)
    prune_and_check_masking(net, pruner, inputs, max(2, pruner.num_prunables // 4))
    save_pruned(net, tmp_path / "net.pt")
    fresh = load_pruned(make().double(), tmp_path / "net.pt").eval()
    assert_equal(run(fresh, inputs), run(net.eval(), inputs))


# -- the look-alikes: per-channel layers that subclass no torch norm ---------------------------
def test_torchvisions_frozen_batch_norm_is_a_per_channel_layer():
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), FrozenBatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).double()
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(net[1], name).copy_(torch.randn(6))
    inputs = torch.randn(4, 2, 5, 5, dtype=DOUBLE)
    pruner = TaylorPruner(net, inputs)
    assert isinstance(net[1], FrozenBatchNorm2d) and isinstance(net[1], PrunableLayer)
    assert [layer for layer in pruner.chains[0].producers] == [net[0], net[1]]
    prune_and_check_masking(net, pruner, inputs, max_to_prune=3)
    assert net[1].running_var.shape == (net[0].out_channels,)
