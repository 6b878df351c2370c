"""Taylor estimates of single layers: the value of eq. 8, accumulation, when nothing is
recorded, and that nothing is kept alive once its backward has run.

Every reference value is computed independently of the library: the same weights in plain
torch layers, the activations built step by step, their gradients from
``torch.autograd.grad``, and eq. 8 written out: mean over examples of
``| mean over positions of a * dL/da |``.
"""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.testing import assert_close

from prunable_nn import EstimateTotals, PBatchNorm2d, PConv2d, PLinear, TaylorPruner

DOUBLE = torch.float64


def eq8(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``theta[n, k] = | mean over positions of a * g |`` for ``(N, C, ...)``, shape ``(N, C)``."""
    product = activation * grad
    positions = tuple(range(2, product.dim()))
    return (product.mean(dim=positions) if positions else product).abs()


class SmallNet(nn.Module):
    """``conv -> bn -> relu -> conv (stride 2) -> flatten -> linear`` on ``(N, 3, 6, 6)``."""

    def __init__(self, relu: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = PConv2d(3, 5, 3, padding=1, dtype=DOUBLE)
        self.bn = PBatchNorm2d(5, dtype=DOUBLE)
        self.relu = relu if relu is not None else nn.ReLU()
        self.conv2 = PConv2d(5, 4, 3, stride=2, dtype=DOUBLE)
        self.fc = PLinear(4 * 2 * 2, 3, dtype=DOUBLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.relu(self.bn(self.conv1(x))))
        return self.fc(x.flatten(1))

    def layers(self) -> dict[str, nn.Module]:
        return {"conv1": self.conv1, "bn": self.bn, "conv2": self.conv2, "fc": self.fc}


def reference_thetas(net: SmallNet, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """``theta[n, k]`` of every layer of ``net``: the training forward pass written out with
    torch.nn.functional and the layers' current weights, then eq. 8."""
    w = {name: [p.detach() for p in layer.parameters()] for name, layer in net.layers().items()}
    x = x.detach().requires_grad_()  # the weights are detached: something must need a gradient
    a_conv1 = F.conv2d(x, *w["conv1"], padding=1)
    if net.bn.training:
        a_bn = F.batch_norm(a_conv1, None, None, *w["bn"], training=True, eps=net.bn.eps)
    else:
        a_bn = F.batch_norm(a_conv1, net.bn.running_mean, net.bn.running_var, *w["bn"], eps=net.bn.eps)
    a_conv2 = F.conv2d(F.relu(a_bn), *w["conv2"], stride=2)
    a_fc = F.linear(a_conv2.flatten(1), *w["fc"])
    activations = [a_conv1, a_bn, a_conv2, a_fc]
    grads = torch.autograd.grad(F.cross_entropy(a_fc, target), activations)
    return {name: eq8(a.detach(), g) for name, a, g in zip(net.layers(), activations, grads)}


def batch(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 3, 6, 6, dtype=DOUBLE, generator=generator)
    return x, torch.randint(0, 3, (size,), generator=generator)


def train_backward(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(net(x), target)
    loss.backward()
    return loss


@pytest.fixture
def net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet()


# -- the value of eq. 8 -------------------------------------------------------------------------
def test_estimates_of_conv_bn_and_linear_equal_eq8(net):
    x, target = batch(6, seed=1)
    expected = reference_thetas(net, x, target)
    train_backward(net, x, target)
    for name, layer in net.layers().items():
        assert layer.examples_seen == 6, name
        assert_close(layer.taylor_estimates, expected[name].mean(0), msg=name)
        assert layer.taylor_estimates.shape == (layer.num_output_channels,)
        assert (layer.taylor_estimates > 0).all(), name


def test_linear_on_sequences_averages_over_positions_then_examples():
    torch.manual_seed(0)
    layer = PLinear(7, 4, dtype=DOUBLE)
    x = torch.randn(5, 6, 7, dtype=DOUBLE)  # (N, L, C): the L dimension holds positions
    target = torch.randn(5, 6, 4, dtype=DOUBLE)

    a = F.linear(x.requires_grad_(), layer.weight.detach(), layer.bias.detach())
    g, = torch.autograd.grad(F.mse_loss(a.tanh(), target), a)
    theta = (a.detach() * g).mean(dim=1).abs()

    F.mse_loss(layer(x).tanh(), target).backward()
    assert layer.examples_seen == 5
    assert_close(layer.taylor_estimates, theta.mean(0))
    # the sign is taken per example, after averaging over positions, not per position
    assert not torch.allclose(layer.taylor_estimates, (a.detach() * g).abs().mean(dim=(0, 1)))


def test_estimates_are_the_running_mean_over_all_examples_of_all_backward_calls(net):
    thetas = {name: [] for name in net.layers()}
    seen = 0
    for seed, size in enumerate([2, 5, 1, 3]):
        x, target = batch(size, seed)
        for name, theta in reference_thetas(net, x, target).items():
            thetas[name].append(theta)
        train_backward(net, x, target)
        seen += size
        for name, layer in net.layers().items():
            assert layer.examples_seen == seen
            assert_close(layer.taylor_estimates, torch.cat(thetas[name]).mean(0), msg=name)


def test_reset_clears_the_estimates_and_the_next_backward_starts_afresh(net):
    train_backward(net, *batch(4, seed=0))
    for layer in net.layers().values():
        layer.reset_estimates()
        assert layer.taylor_estimates is None
        assert layer.examples_seen == 0

    x, target = batch(3, seed=1)
    expected = reference_thetas(net, x, target)
    train_backward(net, x, target)
    for name, layer in net.layers().items():
        assert layer.examples_seen == 3
        assert_close(layer.taylor_estimates, expected[name].mean(0), msg=name)


# -- in-place operations after the layer --------------------------------------------------------
def _estimates_with_activation(activation, inplace, with_pruner):
    torch.manual_seed(0)
    model = nn.Sequential(
        PConv2d(3, 4, 3, dtype=DOUBLE),
        PBatchNorm2d(4, dtype=DOUBLE),
        activation(inplace=inplace),
        PConv2d(4, 2, 1, dtype=DOUBLE),
    )
    x = torch.randn(6, 3, 5, 5, dtype=DOUBLE)
    if with_pruner:
        TaylorPruner(model, x)
    torch.manual_seed(1)  # the same dropout mask in both runs
    model(x).square().mean().backward()
    return {"conv": model[0], "bn": model[1], "next conv": model[3]}


@pytest.mark.parametrize("activation", [nn.ReLU, nn.ReLU6, nn.Hardtanh], ids=lambda cls: cls.__name__)
def test_an_inplace_clamp_after_the_layer_gives_the_estimates_of_the_out_of_place_one(activation):
    """conv -> bn -> clamp(inplace) -> conv, no pruner: where a clamp changes the activation
    in place its input gradient is zero, so a * dL/da is unchanged and the estimate is right."""
    in_place = _estimates_with_activation(activation, True, with_pruner=False)
    out_of_place = _estimates_with_activation(activation, False, with_pruner=False)
    for name, layer in in_place.items():
        assert layer.taylor_estimates is not None
        assert_close(layer.taylor_estimates, out_of_place[name].taylor_estimates, msg=name)


@pytest.mark.parametrize(
    "activation",
    [nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.Dropout],
    ids=lambda cls: cls.__name__,
)
def test_a_pruner_keeps_any_inplace_activation_from_corrupting_the_chain_end_estimate(activation):
    """With a pruner, any in-place activation after a chain end gives the out-of-place estimate
    (the pruner makes the non-clamping ones out of place)."""
    in_place = _estimates_with_activation(activation, True, with_pruner=True)
    out_of_place = _estimates_with_activation(activation, False, with_pruner=True)
    assert in_place["bn"].taylor_estimates is not None
    assert_close(in_place["bn"].taylor_estimates, out_of_place["bn"].taylor_estimates)


# -- when nothing is recorded -------------------------------------------------------------------
@pytest.mark.parametrize("eval_modules", [["bn"], ["conv1", "bn", "conv2", "fc"]])
def test_layers_in_eval_mode_record_what_reaches_them(net, eval_modules):
    """Fine-tuning with the batch norms in eval mode (their statistics frozen), or a whole
    model in eval mode that a loss is backward'ed through: the gradients still reach every
    layer, and the estimates are eq. 8 of that forward."""
    x, target = batch(4, seed=0)
    train_backward(net.train(), *batch(8, seed=1))  # running statistics away from their start
    for layer in net.layers().values():
        layer.reset_estimates()
    for name in eval_modules:
        net.layers()[name].eval()
    expected = reference_thetas(net, x, target)
    train_backward(net, x, target)
    for name, layer in net.layers().items():
        assert layer.examples_seen == 4, name
        assert_close(layer.taylor_estimates, expected[name].mean(0), msg=name)


def test_nothing_is_recorded_when_estimating_is_switched_off(net):
    net.bn.estimating = False
    train_backward(net, *batch(4, seed=0))
    assert net.bn.taylor_estimates is None
    assert net.bn.examples_seen == 0
    assert net.conv1.examples_seen == 4  # the others still record


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_nothing_is_recorded_without_autograd(net, context):
    with context():
        net(batch(4, seed=0)[0])
    for layer in net.layers().values():
        assert layer.taylor_estimates is None
        assert layer.examples_seen == 0

    # a later training batch is all that counts
    x, target = batch(3, seed=1)
    expected = reference_thetas(net, x, target)
    train_backward(net, x, target)
    for name, layer in net.layers().items():
        assert layer.examples_seen == 3
        assert_close(layer.taylor_estimates, expected[name].mean(0), msg=name)


def test_a_frozen_layer_records_only_when_its_input_requires_grad(net):
    net.conv1.requires_grad_(False)
    x, target = batch(4, seed=0)
    train_backward(net, x, target)
    assert net.conv1.taylor_estimates is None  # output needs no gradient: nothing to estimate
    assert net.bn.examples_seen == 4

    expected = reference_thetas(net, x, target)
    train_backward(net, x.requires_grad_(), target)
    assert net.conv1.examples_seen == 4
    assert_close(net.conv1.taylor_estimates, expected["conv1"].mean(0))


# -- nothing is kept ------------------------------------------------------------------------------
def output_storages(net: SmallNet) -> list[StorageWeakRef]:
    """Weak references to the storage of every prunable layer's next output."""
    refs = []

    def keep_weak_reference(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        refs.append(StorageWeakRef(out.untyped_storage()))

    for layer in net.layers().values():
        layer.register_forward_hook(keep_weak_reference)
    return refs


@pytest.fixture
def no_cyclic_gc():
    """Only reference counting frees memory: a reference cycle would keep tensors alive."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_the_activation_is_released_when_its_gradient_has_arrived(no_cyclic_gc):
    torch.manual_seed(0)
    layer = PLinear(8, 4)
    out = layer(torch.randn(3, 8))
    activation = StorageWeakRef(out.untyped_storage())
    loss = out.sum()  # the sum saves nothing: only the estimate's hook can hold ``out``
    del out
    assert not activation.expired()  # control: the pending estimate holds it until backward
    loss.backward()
    assert layer.examples_seen == 3
    assert activation.expired()  # while the graph (``loss``) is still alive


def test_no_activation_outlives_the_backward_pass_in_a_network(no_cyclic_gc):
    torch.manual_seed(0)
    net = SmallNet(relu=nn.ReLU(inplace=True))
    activations = output_storages(net)
    loss = train_backward(net, *batch(4, seed=0))
    assert len(activations) == 4
    assert net.fc.examples_seen == 4
    assert all(ref.expired() for ref in activations)
    del loss


def test_a_forward_without_backward_frees_its_activations_with_its_output(no_cyclic_gc):
    torch.manual_seed(0)
    net = SmallNet(relu=nn.ReLU(inplace=True))
    activations = output_storages(net)
    out = net(batch(4, seed=0)[0])
    assert out.requires_grad
    assert not any(ref.expired() for ref in activations)
    del out
    assert all(ref.expired() for ref in activations)
    assert all(layer.examples_seen == 0 for layer in net.layers().values())


# -- pruning between forward and backward -------------------------------------------------------
def test_backward_through_a_graph_built_before_a_drop_leaves_the_estimates_consistent(net):
    train_backward(net, *batch(4, seed=0))
    before = {name: layer.taylor_estimates.clone() for name, layer in net.layers().items()}

    stale_loss = F.cross_entropy(net(batch(5, seed=1)[0]), batch(5, seed=1)[1])
    keep = [0, 2, 3]
    net.conv1.drop_output([1, 4])
    net.bn.drop_output([1, 4])
    net.conv2.drop_input([1, 4])
    stale_loss.backward()

    # the layers whose channels changed keep their (sliced) estimates and the new count
    for name in ("conv1", "bn"):
        layer = net.layers()[name]
        assert layer.taylor_estimates.shape == (3,)
        assert layer.examples_seen == 4
        assert_close(layer.taylor_estimates, before[name][keep], msg=name)
    # the parameters' gradients still have the new shapes
    assert net.conv1.weight.grad.shape == (3, 3, 3, 3)
    assert net.conv2.weight.grad.shape == (4, 3, 3, 3)

    # and training goes on, the new batch adding to the estimates of the new channels
    x, target = batch(2, seed=2)
    expected = reference_thetas(net, x, target)
    train_backward(net, x, target)
    assert net.bn.examples_seen == 6
    assert_close(net.bn.taylor_estimates, (4 * before["bn"][keep] + 2 * expected["bn"].mean(0)) / 6)


def test_estimate_totals_round_trip_and_refuse_the_wrong_number_of_channels():
    layer = PBatchNorm2d(3)
    layer.set_estimate_totals(EstimateTotals(torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64), examples=2))
    assert torch.equal(layer.taylor_estimates, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert layer.examples_seen == 2 and layer.estimate_totals.skipped == 0
    with pytest.raises(ValueError, match=r"PBatchNorm2d.*shape \(2,\) for 3 channels"):
        layer.set_estimate_totals(EstimateTotals(torch.zeros(2, dtype=torch.float64), examples=1))
    assert layer.examples_seen == 2  # unchanged
