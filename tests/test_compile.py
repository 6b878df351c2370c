"""Training a ``torch.compile``'d model: the recording is part of one graph (no graph break,
``fullgraph=True`` works), the estimates are the eager ones, the loss scale, non-finite
batches and ``no_estimates`` are handled when the backward runs, and a prune recompiles.

``aot_eager`` runs dynamo and AOTAutograd, where the recording meets the compiler, without
a C++ toolchain; inductor (which fuses and may drop or reorder operations) runs where one
is installed.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

from loops import ESTIMATORS, assert_estimates, batch, converted, expected_estimates, float_model, reference_run, scaled_steps
from prunable_nn import APoZ, ActivationMean, ActivationStd, Taylor, TaylorPruner, no_estimates

BACKENDS = [
    "aot_eager",
    pytest.param(
        "inductor", marks=pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler")
    ),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles for itself, within dynamo's recompile limits."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(model: torch.nn.Module, backend: str = "aot_eager", **options) -> torch.nn.Module:
    return torch.compile(model, backend=backend, fullgraph=True, **options)


def train_both(net: torch.nn.Module, eager: torch.nn.Module, seed: int) -> None:
    """One backward pass of the same batch through the compiled and the eager model."""
    x, y = batch(seed=seed)
    F.cross_entropy(net(x), y).backward()
    F.cross_entropy(eager(x), y).backward()


def assert_eager_estimates(model: torch.nn.Module, eager: torch.nn.Module, examples: int, **tolerance) -> None:
    for name in ESTIMATORS:
        layer, expected = model.get_submodule(name), eager.get_submodule(name)
        assert layer.examples_seen == expected.examples_seen == examples, name
        torch.testing.assert_close(layer.taylor_estimates, expected.taylor_estimates, msg=name, **tolerance)


def test_a_training_step_of_a_converted_model_is_one_graph():
    """The pruner's model records after its ReLUs (forward hooks) and at its layers: dynamo
    sees it all in one graph, as it does the plain model."""
    reference, model, _ = converted()
    x, y = batch()

    def step(net, x, y):
        return F.cross_entropy(net(x), y)

    for net in (reference, model):
        explanation = torch._dynamo.explain(step)(net, x, y)
        assert explanation.graph_count == 1 and not explanation.break_reasons, explanation.break_reasons


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_compiled_model_records_the_eager_estimates_and_recompiles_after_a_prune(backend):
    reference, model, pruner = converted()
    eager = copy.deepcopy(reference)
    eager_pruner = TaylorPruner(eager, batch()[0])
    net = compiled(model, backend)
    for round_ in range(2):
        train_both(net, eager, round_)
        assert_eager_estimates(model, eager, 5, rtol=1e-6, atol=1e-9)
        pruner.prune(3)
        eager_pruner.prune(3)
        assert [chain.num_channels for chain in pruner.chains] == [chain.num_channels for chain in eager_pruner.chains]


@pytest.mark.parametrize("criterion", [Taylor(), ActivationMean(), ActivationStd(), APoZ()], ids=repr)
def test_every_recorded_statistic_compiles_to_its_eager_numbers(criterion):
    reference, model, _ = converted()
    eager = copy.deepcopy(reference)
    TaylorPruner(model, batch()[0], criterion=criterion)
    TaylorPruner(eager, batch()[0], criterion=criterion)
    net = compiled(model)
    for seed in range(2):
        train_both(net, eager, seed)
    assert_eager_estimates(model, eager, 10)


def test_each_compiled_forward_of_one_loss_counts():
    """Two views through the model in one loss (a siamese step): both forwards count."""
    reference, model, _ = converted()
    x, y = batch()
    views, expected = (x, x.flip(3)), []
    for view in views:
        out, _, outputs, acts = reference_run(copy.deepcopy(reference), view)
        expected.append(expected_estimates(outputs, torch.autograd.grad(F.cross_entropy(out, y), acts)))
    net = compiled(model)
    (F.cross_entropy(net(views[0]), y) + F.cross_entropy(net(views[1]), y)).backward()
    assert_estimates(model, {name: (expected[0][name] + expected[1][name]) / 2 for name in ESTIMATORS}, examples=10)


@pytest.mark.parametrize("excluded", [False, True])
def test_a_compiled_saliency_pass_counts_as_a_batch_of_its_own_unless_excluded(excluded):
    reference, model, _ = converted()
    x, y = batch()
    out, _, outputs, acts = reference_run(reference, x)
    saliency = expected_estimates(outputs, torch.autograd.grad(out.max(dim=1).values.sum(), acts, retain_graph=True))
    loss = expected_estimates(outputs, torch.autograd.grad(F.cross_entropy(out, y), acts))

    xm = x.clone().requires_grad_()
    out = compiled(model)(xm)
    with no_estimates() if excluded else torch.enable_grad():
        torch.autograd.grad(out.max(dim=1).values.sum(), xm, retain_graph=True)
    F.cross_entropy(out, y).backward()
    if excluded:
        assert_estimates(model, loss, examples=5)
    else:
        assert_estimates(model, {name: (saliency[name] + loss[name]) / 2 for name in ESTIMATORS}, examples=10)


def test_compiled_estimates_do_not_depend_on_the_loss_scale():
    """The scale is read when the backward runs: a fresh scaler (no scale tensor yet when
    the graph is traced) and a backoff between the steps are both divided out."""
    estimates = []
    for scale in (2.0**4, 2.0**12):
        model, pruner = float_model()
        pruner.grad_scaler = torch.amp.GradScaler("cpu", init_scale=scale, backoff_factor=0.25, growth_interval=1)
        scales = scaled_steps(compiled(model), pruner.grad_scaler, [(*batch(seed=0), 1.0), (*batch(seed=1), 1.0)])
        assert scales == [scale, 2 * scale]
        estimates.append([model.get_submodule(name).taylor_estimates for name in ESTIMATORS])
    for low, high in zip(*estimates):
        torch.testing.assert_close(low, high)


def test_a_compiled_overflowed_batch_is_skipped_and_counted():
    model, pruner = float_model()
    pruner.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    clean, clean_pruner = float_model()
    clean_pruner.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    scaled_steps(compiled(model), pruner.grad_scaler, [(*batch(seed=0), 1.0), (*batch(seed=1), float("inf"))])
    scaled_steps(clean, clean_pruner.grad_scaler, [(*batch(seed=0), 1.0)])
    for name in ESTIMATORS:
        layer = model.get_submodule(name)
        assert layer.batches_skipped == 1 and layer.examples_seen == 5, name
        torch.testing.assert_close(layer.taylor_estimates, clean.get_submodule(name).taylor_estimates, msg=name)


def test_a_compiled_copy_records_for_itself():
    _, model, _ = converted()
    twin = copy.deepcopy(model)
    x, y = batch()
    F.cross_entropy(compiled(twin)(x), y).backward()
    for name in ESTIMATORS:
        assert model.get_submodule(name).taylor_estimates is None
        assert twin.get_submodule(name).examples_seen == 5


def test_a_model_compiled_for_dynamic_shapes_counts_every_batch_size():
    _, model, _ = converted()
    net = compiled(model, dynamic=True)
    for size in (5, 3, 7):
        x, y = batch(size)
        F.cross_entropy(net(x), y).backward()
    assert [model.get_submodule(name).examples_seen for name in ESTIMATORS] == [15, 15]


def test_a_compiled_model_goes_on_through_more_prunes_than_dynamo_keeps_versions_of_a_graph():
    """Each prune changes the parameters' shapes, which dynamo holds static: a version per
    round, and ``fullgraph=True`` fails once ``recompile_limit`` (8) is reached. With
    parameter shapes dynamic, as the README advises for long loops, the rounds share graphs."""
    _, model, pruner = converted()
    net = compiled(model)
    rounds = torch._dynamo.config.recompile_limit + 4
    with torch._dynamo.config.patch(force_parameter_static_shapes=False):
        for round_ in range(rounds):
            F.cross_entropy(net(batch(seed=round_)[0]), batch(seed=round_)[1]).backward()
            assert [model.get_submodule(name).examples_seen for name in ESTIMATORS] == [5, 5]
            pruner.prune(1)
    assert sum(chain.num_channels for chain in pruner.chains) == 14 - rounds


def third_party_model(name: str) -> torch.nn.Module:
    """A network of another library with 10 classes, in double precision."""
    torch.manual_seed(0)
    if name == "torchvision resnet":
        from torchvision.models.resnet import BasicBlock, ResNet

        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).double()
    timm = pytest.importorskip("timm")
    return timm.create_model(name, num_classes=10).double()


@pytest.mark.parametrize("name", ["torchvision resnet", "resnet10t", "mobilenetv3_small_050"])
def test_a_compiled_third_party_model_records_the_eager_estimates(name):
    """ResNets add the shortcut into their last batch norm's output in place (``out +=
    identity``): the estimate reads the sum, compiled as eagerly (graph.py). timm's
    ``BatchNormAct2d`` ends in an in-place ReLU, whose backward keeps its output."""
    model = third_party_model(name)
    eager = copy.deepcopy(model)
    x, y = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 2])
    TaylorPruner(model, x)
    TaylorPruner(eager, x)
    F.cross_entropy(compiled(model)(x), y).backward()
    F.cross_entropy(eager(x), y).backward()
    estimating = [path for path, layer in eager.named_modules() if getattr(layer, "estimating", False)]
    assert estimating
    for path in estimating:
        layer, expected = model.get_submodule(path), eager.get_submodule(path)
        assert layer.examples_seen == expected.examples_seen == 2, path
        torch.testing.assert_close(layer.taylor_estimates, expected.taylor_estimates, msg=path)
