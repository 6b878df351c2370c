"""``to_torch``: a pruned model as plain torch layers, that torch alone can run and deploy."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from models import VGG, DigitsNet
from nets import (
    SIZE_ATTRIBUTES,
    assert_same_snapshot,
    conv_nets,
    snapshot,
)
from prunable_nn import PBatchNorm2d, PConv2d, PLinear, PrunableLayer, TaylorPruner, to_torch

MODELS = {
    "digits": (lambda: DigitsNet(width=6), (1, 28, 28)),
    "vgg11": (lambda: VGG("vgg11", width=0.125, input_size=32, hidden=16), (3, 32, 32)),
}


def pruned_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """``MODELS[name]`` trained a step, then pruned by 3 channels; and a batch of inputs."""
    torch.manual_seed(0)
    make, shape = MODELS[name]
    model = make()
    inputs, labels = torch.randn(3, *shape), torch.randint(10, (3,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    model.train()
    F.cross_entropy(model(inputs), labels).backward()
    removals = model.prune(max_to_prune=3, optimizer=optimizer)
    assert sum(len(removal.indices) for removal in removals) == 3
    return model, inputs


def reachable(root: object) -> list[object]:
    """Objects reachable from ``root`` through containers and modules' ``__dict__``."""
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen[id(item)] = item
        if isinstance(item, nn.Module):
            stack.extend(vars(item).values())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return list(seen.values())


def assert_plain_twin(plain: nn.Module, layer: PrunableLayer, name: str) -> None:
    assert type(plain) is layer.torch_class, name
    for attr in SIZE_ATTRIBUTES:
        if hasattr(layer, attr):
            assert getattr(plain, attr) == getattr(layer, attr), f"{name}.{attr}"
    state, plain_state = layer.state_dict(), plain.state_dict()
    assert plain_state.keys() == state.keys(), name
    for key, value in state.items():
        assert plain_state[key].shape == value.shape, f"{name}.{key}"
        assert torch.equal(plain_state[key], value), f"{name}.{key}"
        assert plain_state[key].data_ptr() != value.data_ptr(), f"{name}.{key} shares memory"
    for key, param in layer.named_parameters():
        assert plain.get_parameter(key).requires_grad == param.requires_grad, f"{name}.{key}"
    assert plain.training == layer.training, name


# -- the pruned models ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_to_torch_of_a_pruned_model(name):
    model, inputs = pruned_model(name)
    pruner = model.pruner
    layer_names = [n for n, module in model.named_modules() if isinstance(module, PrunableLayer)]
    model.classifier.eval()  # mixed training flags, and a frozen parameter
    model.features[0].bias.requires_grad_(False)
    flags = {n: module.training for n, module in model.named_modules()}
    before = snapshot(model, pruner)

    plain = to_torch(model)

    assert type(plain) is type(model) and plain is not model
    assert not any(isinstance(module, PrunableLayer) for module in plain.modules())
    modules = dict(plain.named_modules())
    assert modules.keys() == flags.keys()
    assert {n: module.training for n, module in modules.items()} == flags
    for n in layer_names:
        assert_plain_twin(modules[n], model.get_submodule(n), n)
    assert not plain.features[0].bias.requires_grad and plain.features[0].weight.requires_grad
    # the copy holds no pruner, the original keeps its own
    assert not any(isinstance(item, TaylorPruner) for item in reachable(plain))
    assert all("_pruner" not in vars(module) for module in plain.modules())
    assert model.__dict__["_pruner"] is pruner and pruner.model is model
    # the original is as it was
    assert_same_snapshot(before, snapshot(model, pruner))
    assert {n: module.training for n, module in model.named_modules()} == flags
    assert [n for n, module in model.named_modules() if isinstance(module, PrunableLayer)] == layer_names
    assert not model.features[0].bias.requires_grad

    with torch.no_grad():
        expected = model.eval()(inputs)
        torch.testing.assert_close(plain.eval()(inputs), expected, rtol=0, atol=0)
    assert_same_snapshot(before, snapshot(model, pruner))


def test_reading_every_attribute_of_the_copy_leaves_it_plain():
    # TorchScript (trace and script) reads every name in dir(module) while it builds a
    # ScriptModule; PrunableModule's `pruner` property makes a pruner on first read
    model, _ = pruned_model("digits")
    plain = to_torch(model)
    for name in dir(plain):
        getattr(plain, name, None)
    assert not any(isinstance(module, PrunableLayer) for module in plain.modules())
    assert all("_pruner" not in vars(module) for module in plain.modules())


def test_to_torch_copies_weights_rather_than_sharing_them():
    model, inputs = pruned_model("digits")
    plain = to_torch(model)
    with torch.no_grad():
        for param in plain.parameters():
            param.add_(1.0)
        for buffer in plain.buffers():
            buffer.add_(1)
    again = to_torch(model)
    for (key, value), (_, fresh) in zip(plain.state_dict().items(), again.state_dict().items()):
        assert not torch.equal(value, fresh), key


# -- deployment with torch alone --------------------------------------------------------------
LOAD_WITHOUT_PRUNABLE_NN = textwrap.dedent(
    """
    import sys

    sys.modules["prunable_nn"] = None  # an import of either now fails
    sys.modules["models"] = None
    import torch

    torch.set_num_threads(1)
    kind, model_path, io_path = sys.argv[1:]
    data = torch.load(io_path)
    if kind == "export":
        model = torch.export.load(model_path).module()
    else:
        model = torch.jit.load(model_path)
    with torch.no_grad():
        torch.testing.assert_close(model(data["inputs"]), data["expected"], rtol=0, atol=0)
    for name in ("prunable_nn", "models"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise AssertionError(name + " was importable")
    print("loaded and matched")
    """
)


def run_without_prunable_nn(kind: str, model_path: Path, inputs: torch.Tensor, expected: torch.Tensor) -> None:
    io_path = model_path.with_suffix(".io.pt")
    torch.save({"inputs": inputs, "expected": expected}, io_path)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PRUNABLE_NN, kind, str(model_path), str(io_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=model_path.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "loaded and matched" in result.stdout


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_export_program_runs_without_prunable_nn(name, tmp_path):
    model, inputs = pruned_model(name)
    plain = to_torch(model).eval()
    with torch.no_grad():
        expected = model.eval()(inputs)
    program = torch.export.export(plain, (inputs,))
    path = tmp_path / f"{name}.pt2"
    torch.export.save(program, path)
    run_without_prunable_nn("export", path, inputs, expected)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_runs_without_prunable_nn(name, tmp_path):
    # traced here; scripting is covered by test_scripted_sequential_runs_without_prunable_nn
    model, inputs = pruned_model(name)
    plain = to_torch(model).eval()
    with torch.no_grad():
        expected = model.eval()(inputs)
        traced = torch.jit.trace(plain, (inputs,))
    assert not any(isinstance(module, PrunableLayer) for module in plain.modules())
    path = tmp_path / f"{name}.ts.pt"
    traced.save(str(path))
    run_without_prunable_nn("torchscript", path, inputs, expected)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
def test_scripted_sequential_runs_without_prunable_nn(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        PConv2d(2, 5, 3, padding=1), PBatchNorm2d(5), nn.ReLU(), nn.Flatten(), PLinear(5 * 16, 3)
    )
    model[0].drop_output([1, 3])
    model[1].drop_output([1, 3])
    model[4].drop_input([1, 3], features_per_channel=16)
    inputs = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        expected = model.eval()(inputs)
    scripted = torch.jit.script(to_torch(model).eval())
    path = tmp_path / "sequential.ts.pt"
    scripted.save(str(path))
    run_without_prunable_nn("torchscript", path, inputs, expected)


# -- random networks --------------------------------------------------------------------------
def readers_of(layers: list[nn.Module], index: int) -> tuple[list[PrunableLayer], PrunableLayer]:
    """The batch norms after the producer ``layers[index]`` and the layer that reads it."""
    per_channel = []
    for layer in layers[index + 1 :]:
        if isinstance(layer, PBatchNorm2d):
            per_channel.append(layer)
        elif isinstance(layer, (PConv2d, PLinear)):
            return per_channel, layer
    raise AssertionError("a producer without a reader")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=conv_nets(), data=st.data())
def test_to_torch_of_random_pruned_nets(net, data):
    model, shape = net
    layers = list(model)
    producers = [i for i, layer in enumerate(layers[:-1]) if isinstance(layer, (PConv2d, PLinear))]
    for index in data.draw(st.lists(st.sampled_from(producers), min_size=1, unique=True), label="pruned producers"):
        producer = layers[index]
        per_channel, reader = readers_of(layers, index)
        channels = producer.num_output_channels
        drop = data.draw(
            st.lists(st.integers(0, channels - 1), min_size=1, max_size=channels - 1, unique=True), label="drop"
        )
        features_per_channel = reader.in_features // channels if isinstance(reader, PLinear) else 1
        for layer in [producer, *per_channel]:
            layer.drop_output(drop)
        reader.drop_input(drop, features_per_channel=features_per_channel)
    inputs = torch.randn(3, *shape)
    with torch.no_grad():
        model.train()(inputs)  # running statistics away from their initial values
    model.train(data.draw(st.booleans(), label="training"))
    before = {key: value.clone() for key, value in model.state_dict().items()}

    plain = to_torch(model)

    assert not any(isinstance(module, PrunableLayer) for module in plain.modules())
    assert [m.training for m in plain.modules()] == [m.training for m in model.modules()]
    state = plain.state_dict()
    assert list(state) == list(before)
    for key, value in before.items():
        assert state[key].shape == value.shape, key
        assert torch.equal(state[key], value), key
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(inputs), model.eval()(inputs), rtol=0, atol=0)


# -- sharing ----------------------------------------------------------------------------------
def test_a_layer_under_two_names_stays_one_plain_layer():
    torch.manual_seed(0)
    shared = PLinear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    model.extra = shared
    inputs = torch.randn(2, 4)

    plain = to_torch(model)

    assert type(plain[0]) is nn.Linear
    assert plain[0] is plain[2] is plain.extra
    assert plain[0].weight is not shared.weight
    assert len(list(plain.parameters())) == 2
    assert list(plain.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(inputs), model(inputs), rtol=0, atol=0)


def test_a_tied_parameter_stays_tied():
    torch.manual_seed(0)
    first, second, other = PLinear(3, 3), PLinear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    other.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second, nn.Tanh(), other)

    plain = to_torch(model)

    assert type(plain[0]) is type(plain[2]) is nn.Linear
    assert plain[0].weight is plain[2].weight is plain[4].weight
    assert plain[0].weight is not first.weight
    assert plain[0].bias is not plain[2].bias
    inputs = torch.randn(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(plain(inputs), model(inputs), rtol=0, atol=0)


def test_a_prunable_root_becomes_its_plain_twin():
    torch.manual_seed(0)
    layer = PConv2d(3, 6, 3, bias=False)
    layer.drop_output([0, 4])
    layer.weight.requires_grad_(False)
    layer.eval()

    plain = to_torch(layer)

    assert type(plain) is nn.Conv2d
    assert_plain_twin(plain, layer, "root")
    assert isinstance(layer, PConv2d) and layer.out_channels == 4


def test_a_pruner_kept_under_another_name_is_left_out_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(PConv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), PLinear(3 * 4 * 4, 2)))
    pruner = TaylorPruner(model, torch.zeros(1, 1, 6, 6))
    model[0].__dict__["my_pruner"] = pruner

    plain = to_torch(model)

    assert "my_pruner" not in vars(plain[0])
    assert not any(isinstance(item, TaylorPruner) for item in reachable(plain))
    assert model[0].__dict__["my_pruner"] is pruner
