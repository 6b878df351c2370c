"""``save_pruned`` / ``load_pruned``: a pruned model goes to one data-only file and comes back
into a freshly built model of its class, computing exactly what it computed; a file that is
not ours, or a model that does not fit it, is a clear error that leaves the model alone."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from models import VGG, DigitsNet
from nets import (
    conv_nets,
    random_batch,
    train,
)
from prunable_nn import (
    PBatchNorm2d,
    PConv2d,
    PLinear,
    PrunableLayer,
    TaylorPruner,
    convert,
    load_pruned,
    save_pruned,
    to_torch,
)
from prunable_nn.checkpoint import FORMAT, VERSION

LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
ATTRIBUTES = (
    "in_channels", "out_channels", "groups", "kernel_size", "stride", "padding", "dilation",
    "num_features", "in_features", "out_features",
)  # fmt: skip


# -- helpers ----------------------------------------------------------------------------------
def sizes(model: nn.Module) -> dict[str, tuple[str, dict]]:
    """Class and size attributes of every conv / batch-norm / linear layer, plain or prunable."""
    return {
        name: (type(layer).__name__, {attr: getattr(layer, attr) for attr in ATTRIBUTES if hasattr(layer, attr)})
        for name, layer in model.named_modules()
        if isinstance(layer, LAYERS)
    }


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].shape == value.shape, key
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def assert_unchanged(model: nn.Module, before: tuple) -> None:
    """``model`` has the sizes, tensors and parameter objects of ``before = fingerprint(model)``."""
    old_sizes, old_state, old_parameters = before
    assert sizes(model) == old_sizes
    assert_same_state(state_of(model), old_state)
    assert [id(p) for p in model.parameters()] == old_parameters


def fingerprint(model: nn.Module) -> tuple:
    return sizes(model), state_of(model), [id(p) for p in model.parameters()]


def outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(inputs)


def assert_round_trip(saved: nn.Module, fresh: nn.Module, inputs: torch.Tensor, path: Path) -> None:
    """Save ``saved``, load into ``fresh``: same outputs bit for bit, state and sizes; each
    layer of ``fresh`` keeps its class; parameters stay parameters with their requires_grad."""
    classes = {name: type(module) for name, module in fresh.named_modules()}
    requires_grad = {name: p.requires_grad for name, p in fresh.named_parameters()}
    expected = outputs(saved, inputs)
    save_pruned(saved, path)
    assert sizes(fresh) != sizes(saved)  # loading has something to do

    assert load_pruned(fresh, path) is fresh

    assert {name: type(module) for name, module in fresh.named_modules()} == classes
    assert {name: attrs for name, (_, attrs) in sizes(fresh).items()} == {
        name: attrs for name, (_, attrs) in sizes(saved).items()
    }
    assert_same_state(state_of(fresh), state_of(saved))
    for name, param in fresh.named_parameters():
        assert isinstance(param, nn.Parameter) and param.requires_grad == requires_grad[name], name
    assert torch.equal(outputs(fresh, inputs), expected)


def pruned_digits() -> tuple[nn.Module, torch.Tensor]:
    return pruned_model(lambda: DigitsNet(width=6), (1, 28, 28))


def pruned_vgg() -> tuple[nn.Module, torch.Tensor]:
    return pruned_model(lambda: VGG("vgg11", width=0.125, input_size=32, hidden=16), (3, 32, 32))


def pruned_model(make, shape: tuple[int, ...], rounds: int = 3) -> tuple[nn.Module, torch.Tensor]:
    """``make()`` trained a step then pruned by 3 channels, ``rounds`` times; and inputs."""
    torch.manual_seed(0)
    model = make()
    inputs, labels = torch.randn(4, *shape), torch.randint(10, (4,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(rounds):
        train(model, optimizer, inputs, labels, steps=1)
        model.prune(max_to_prune=3, optimizer=optimizer)
    return model, inputs


def pruned_resnet18() -> tuple[nn.Module, torch.Tensor]:
    """A torchvision resnet18 converted by a TaylorPruner and pruned by 40 channels twice."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    inputs, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    pruner = TaylorPruner(model, inputs)
    for _ in range(2):
        model.train()
        model.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        pruner.prune(40)
    return model, inputs


# -- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [pruned_digits, pruned_vgg], ids=["digits", "vgg11"])
def test_round_trip_of_a_pruned_model(make, tmp_path):
    model, inputs = make()
    fresh = DigitsNet(width=6) if isinstance(model, DigitsNet) else VGG("vgg11", width=0.125, input_size=32, hidden=16)
    model.features[0].bias.requires_grad_(False)
    fresh.features[0].bias.requires_grad_(False)
    assert_round_trip(model, fresh, inputs, tmp_path / "model.pt")
    assert all(isinstance(m, PrunableLayer) for m in fresh.modules() if isinstance(m, LAYERS))


def test_round_trip_of_a_converted_resnet18_into_a_converted_one(tmp_path):
    model, inputs = pruned_resnet18()
    fresh = convert(torchvision.models.resnet18(num_classes=10))
    assert_round_trip(model, fresh, inputs, tmp_path / "resnet18.pt")
    assert all(isinstance(m, PrunableLayer) for m in fresh.modules() if isinstance(m, LAYERS))


def test_round_trip_of_a_converted_resnet18_into_a_plain_one_keeps_it_plain(tmp_path):
    model, inputs = pruned_resnet18()
    fresh = torchvision.models.resnet18(num_classes=10)
    assert_round_trip(model, fresh, inputs, tmp_path / "resnet18.pt")
    assert not any(isinstance(m, PrunableLayer) for m in fresh.modules())


def test_round_trip_of_to_torch_of_a_pruned_resnet18(tmp_path):
    model, inputs = pruned_resnet18()
    plain = to_torch(model)
    assert not any(isinstance(m, PrunableLayer) for m in plain.modules())
    fresh = torchvision.models.resnet18(num_classes=10)
    assert_round_trip(plain, fresh, inputs, tmp_path / "plain.pt")
    assert not any(isinstance(m, PrunableLayer) for m in fresh.modules())
    assert torch.equal(outputs(fresh, inputs), outputs(model, inputs))


def test_a_pruned_depthwise_convolution_round_trips(tmp_path):
    # pruning changes the groups of a depthwise convolution, and only of one
    def make() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(
            PConv2d(2, 6, 1),
            PConv2d(6, 6, 3, padding=1, groups=6),
            PBatchNorm2d(6),
            nn.ReLU(),
            nn.Flatten(),
            PLinear(6 * 16, 3),
        )

    model, inputs = make(), torch.randn(2, 2, 4, 4)
    for layer in model[:3]:
        layer.drop_output([1, 4])
    model[5].drop_input([1, 4], features_per_channel=16)
    with torch.no_grad():
        model.train()(inputs)
    assert model[1].groups == model[1].in_channels == model[1].out_channels == 4
    fresh = make()
    assert_round_trip(model, fresh, inputs, tmp_path / "depthwise.pt")
    assert fresh[1].groups == 4


def test_a_model_built_with_other_widths_loads(tmp_path):
    # widths are what pruning changes, so the file's replace the model's
    model, inputs = pruned_digits()
    fresh = DigitsNet(width=8)
    assert_round_trip(model, fresh, inputs, tmp_path / "digits.pt")


def test_a_loaded_prunable_model_trains_and_prunes_on(tmp_path):
    model, inputs = pruned_digits()
    save_pruned(model, tmp_path / "digits.pt")
    fresh = DigitsNet(width=6)
    before = fresh.num_prunables  # its own pruner, for the widths before loading
    load_pruned(fresh, tmp_path / "digits.pt")
    assert fresh.num_prunables == model.num_prunables < before
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.05)
    train(fresh, optimizer, inputs, torch.arange(4), steps=1)
    removals = fresh.prune(max_to_prune=2, optimizer=optimizer)
    assert sum(len(removal.indices) for removal in removals) == 2
    assert fresh(inputs).shape == (4, 10)


def test_load_takes_the_files_dtype_and_map_location(tmp_path):
    model, inputs = pruned_digits()
    model.double()
    save_pruned(model, tmp_path / "digits.pt")
    fresh = load_pruned(DigitsNet(width=6), tmp_path / "digits.pt", map_location="cpu")
    assert all(p.dtype == torch.float64 for p in fresh.parameters())
    assert torch.equal(outputs(fresh, inputs.double()), outputs(model, inputs.double()))


def test_a_model_built_on_the_meta_device_loads(tmp_path):
    # every tensor comes from the file, so the fresh model need not allocate or initialise any
    model, inputs = pruned_vgg()
    save_pruned(model, tmp_path / "vgg.pt")
    with torch.device("meta"):
        fresh = VGG("vgg11", width=0.125, input_size=32, hidden=16)
    load_pruned(fresh, tmp_path / "vgg.pt")
    assert all(value.device.type == "cpu" for value in fresh.state_dict().values())
    assert torch.equal(outputs(fresh, inputs), outputs(model, inputs))


def test_save_and_load_through_a_file_object():
    model, inputs = pruned_digits()
    buffer = io.BytesIO()
    save_pruned(model, buffer)
    buffer.seek(0)
    fresh = load_pruned(DigitsNet(width=6), buffer)
    assert torch.equal(outputs(fresh, inputs), outputs(model, inputs))


# -- the file ---------------------------------------------------------------------------------
def assert_data_only(item: object, where: str = "checkpoint") -> None:
    """Everything in ``item`` is a dict, list, str, int, float, bool, None or tensor."""
    if isinstance(item, dict):
        assert type(item) is dict, where
        for key, value in item.items():
            assert type(key) is str, where
            assert_data_only(value, f"{where}[{key!r}]")
    elif isinstance(item, list):
        for index, value in enumerate(item):
            assert_data_only(value, f"{where}[{index}]")
    else:
        assert item is None or type(item) in (str, int, float, bool, torch.Tensor), f"{where}: {type(item)}"


def test_the_file_is_data_only_and_describes_every_layer(tmp_path):
    model, _ = pruned_resnet18()
    save_pruned(model, tmp_path / "resnet18.pt")

    checkpoint = torch.load(tmp_path / "resnet18.pt", weights_only=True)

    assert_data_only(checkpoint)
    assert checkpoint["format"] == FORMAT and checkpoint["version"] == VERSION
    assert checkpoint["model_class"] == "ResNet"
    layers = dict(model.named_modules())
    assert list(checkpoint["layers"]) == [n for n, m in layers.items() if isinstance(m, LAYERS)]
    conv = checkpoint["layers"]["layer1.0.conv1"]
    assert conv == {
        "kind": "Conv2d",
        "prunable": True,
        "in_channels": layers["layer1.0.conv1"].in_channels,
        "out_channels": layers["layer1.0.conv1"].out_channels,
        "groups": 1,
        "kernel_size": [3, 3],
        "stride": [1, 1],
        "padding": [1, 1],
        "dilation": [1, 1],
        "padding_mode": "zeros",
    }
    bn1 = {"kind": "BatchNorm2d", "prunable": True, "num_features": model.bn1.num_features, "eps": 1e-5}
    assert checkpoint["layers"]["bn1"] == bn1
    fc = {"kind": "Linear", "prunable": True, "in_features": model.fc.in_features, "out_features": 10}
    assert checkpoint["layers"]["fc"] == fc
    assert_same_state(checkpoint["state_dict"], state_of(model))
    assert all(not value.requires_grad for value in checkpoint["state_dict"].values())
    # a to_torch copy says its layers are plain
    save_pruned(to_torch(model), tmp_path / "plain.pt")
    plain = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert not any(record["prunable"] for record in plain["layers"].values())
    assert {name: {**record, "prunable": True} for name, record in plain["layers"].items()} == checkpoint["layers"]
    unpruned = torchvision.models.resnet18(num_classes=10)
    widths = [record["out_channels"] for record in plain["layers"].values() if record["kind"] == "Conv2d"]
    assert sum(widths) == sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    assert sum(widths) < sum(m.out_channels for m in unpruned.modules() if isinstance(m, nn.Conv2d))


def test_saving_leaves_the_model_alone(tmp_path):
    model, _ = pruned_digits()
    before = fingerprint(model)
    save_pruned(model, tmp_path / "digits.pt")
    assert_unchanged(model, before)


# -- files that are not ours ------------------------------------------------------------------
RAN = []


def _run_payload() -> None:
    RAN.append("payload")


class Payload:
    """Pickles as a call of ``_run_payload``: loading it without ``weights_only`` runs it."""

    def __reduce__(self):
        return (_run_payload, ())


def test_the_payload_would_run_without_weights_only(tmp_path):
    # the check that the payload below is real
    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    RAN.clear()
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert RAN == ["payload"]


@pytest.mark.parametrize("where", ["top", "layers", "state_dict"])
def test_a_file_with_pickled_code_is_refused_without_running_it(where, tmp_path):
    model, _ = pruned_digits()
    save_pruned(model, tmp_path / "digits.pt")
    checkpoint = torch.load(tmp_path / "digits.pt", weights_only=True)
    if where == "top":
        checkpoint = Payload()
    elif where == "layers":
        checkpoint["layers"]["features.0"]["kernel_size"] = Payload()
    else:
        checkpoint["state_dict"]["extra"] = Payload()
    torch.save(checkpoint, tmp_path / "evil.pt")
    fresh = DigitsNet(width=6)
    before = fingerprint(fresh)
    RAN.clear()

    with pytest.raises(ValueError, match=r"evil.pt.*weights_only=True\) refused it, running nothing: it holds pickled objects other than data: .*_run_payload"):
        load_pruned(fresh, tmp_path / "evil.pt")

    assert RAN == []
    assert_unchanged(fresh, before)


def test_a_truncated_file_is_refused(tmp_path):
    model, _ = pruned_digits()
    save_pruned(model, tmp_path / "digits.pt")
    data = (tmp_path / "digits.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    fresh = DigitsNet(width=6)
    before = fingerprint(fresh)
    with pytest.raises(ValueError, match="cut.pt.*not a readable prunable_nn checkpoint"):
        load_pruned(fresh, tmp_path / "cut.pt")
    assert_unchanged(fresh, before)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            lambda model, ours: model.state_dict(),
            "not a prunable_nn checkpoint.*without a 'format' entry.*plain state_dict.*save_pruned",
        ),
        (lambda model, ours: [1, 2, 3], "not a prunable_nn checkpoint.*found a list"),
        (lambda model, ours: {**ours, "format": "other"}, "expected format '.*', found format 'other'"),
        (lambda model, ours: {**ours, "version": 2}, "version 2 is not supported.*newer"),
        (lambda model, ours: {**ours, "note": "hi"}, "entries are .*'note'"),
    ],
    ids=["state_dict", "list", "other-format", "newer-version", "other-entries"],
)
def test_a_file_of_another_format_is_refused(content, message, tmp_path):
    model, _ = pruned_digits()
    save_pruned(model, tmp_path / "digits.pt")
    ours = torch.load(tmp_path / "digits.pt", weights_only=True)
    torch.save(content(model, ours), tmp_path / "other.pt")
    fresh = DigitsNet(width=6)
    before = fingerprint(fresh)
    with pytest.raises(ValueError, match=message):
        load_pruned(fresh, tmp_path / "other.pt")
    assert_unchanged(fresh, before)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pruned(DigitsNet(width=6), tmp_path / "nothing.pt")


@pytest.mark.parametrize(
    "tamper, message",
    [
        (
            lambda c: c["layers"]["features.3"].update(out_channels=c["layers"]["features.3"]["out_channels"] + 1),
            (
                r"layer 'features.3' \(Conv2d\): .* holds features.3.weight of shape \(\d+, \d+, 3, 3\), "
                r"but its sizes \(in_channels=\d+, out_channels=\d+, groups=1\) give \(\d+, \d+, 3, 3\)"
            ),
        ),
        (
            lambda c: c["state_dict"].update({"features.1.running_var": torch.ones(2)}),
            r"layer 'features.1' \(BatchNorm2d\): .* holds features.1.running_var of shape \(2,\)",
        ),
        (lambda c: c["layers"]["classifier.1"].update(in_features=0), r"'classifier.1'.*in_features=0 is not"),
        (lambda c: c["layers"]["features.0"].update(kind="Conv4d"), r"'features.0' has kind 'Conv4d'"),
        (lambda c: c["layers"]["features.0"].pop("stride"), r"'features.0' \(Conv2d\) has entries"),
        (lambda c: c["state_dict"].update({"features.0.weight": [1.0]}), r"'features.0.weight' is a list, not a"),
    ],
    ids=["conv-sizes", "bn-tensor", "bad-size", "kind", "entries", "not-a-tensor"],
)
def test_a_tampered_checkpoint_is_refused(tamper, message, tmp_path):
    model, _ = pruned_digits()
    save_pruned(model, tmp_path / "digits.pt")
    checkpoint = torch.load(tmp_path / "digits.pt", weights_only=True)
    tamper(checkpoint)
    torch.save(checkpoint, tmp_path / "tampered.pt")
    fresh = DigitsNet(width=6)
    before = fingerprint(fresh)
    with pytest.raises(ValueError, match=message):
        load_pruned(fresh, tmp_path / "tampered.pt")
    assert_unchanged(fresh, before)


# -- models that do not fit -------------------------------------------------------------------
def replace(name: str, make):
    def change(model: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        model.get_submodule(parent)._modules[child] = make()

    return change


MISMATCHES = {
    "kernel-size": (
        replace("features.3", lambda: PConv2d(8, 8, 5, padding=1)),
        (
            r"layer 'features.3' \(Conv2d\) has kernel_size=\[3, 3\] in .*digits.pt' \(a DigitsNet\) but "
            r"kernel_size=\[5, 5\] in the DigitsNet"
        ),
    ),
    "stride": (
        replace("features.3", lambda: nn.Conv2d(8, 8, 3, padding=1, stride=2)),
        r"layer 'features.3' \(Conv2d\) has stride=\[1, 1\] .* but stride=\[2, 2\]",
    ),
    "missing-layer": (
        replace("features.4", nn.Identity),
        r"layer 'features.4' \(BatchNorm2d\) of .*digits.pt' \(a DigitsNet\) is missing from the DigitsNet",
    ),
    "extra-layer": (
        lambda model: model.classifier.append(PLinear(10, 10)),
        r"the DigitsNet has layer 'classifier.2' \(PLinear\) that .*digits.pt' \(a DigitsNet\) does not have",
    ),
    "other-type": (
        replace("features.1", lambda: PConv2d(8, 8, 1)),
        r"layer 'features.1' is a BatchNorm2d in .* but a PConv2d \(Conv2d\) in the DigitsNet",
    ),
    "groups": (
        replace("features.3", lambda: PConv2d(8, 8, 3, padding=1, groups=2)),
        r"layer 'features.3' \(Conv2d\) has groups=1 .* but groups=2 .*depthwise",
    ),
    "eps": (
        replace("features.4", lambda: PBatchNorm2d(8, eps=1e-3)),
        r"layer 'features.4' \(BatchNorm2d\) has eps=1e-05 .* but eps=0.001",
    ),
    "keys": (
        replace("features.4", lambda: PBatchNorm2d(8, affine=False)),
        (
            r"state_dict keys of .* differ: only in the file: \['features.4.bias', 'features.4.weight'\]; "
            r"only in the model: \[\]"
        ),
    ),
    "other-class": (
        lambda model: None,
        (
            r"layer 'features.3' \(Conv2d\) of .*digits.pt' \(a DigitsNet\) is missing from the VGG "
            r"\(and 2 more: \['features.6', 'features.7'\]\)"
        ),
    ),
}


@pytest.mark.parametrize("name", list(MISMATCHES))
def test_a_model_that_does_not_fit_is_refused_and_left_alone(name, tmp_path):
    model, _ = pruned_digits()
    save_pruned(model, tmp_path / "digits.pt")
    change, message = MISMATCHES[name]
    torch.manual_seed(1)
    fresh = VGG("vgg11", width=0.125, input_size=32, hidden=16) if name == "other-class" else DigitsNet(width=8)
    change(fresh)
    before = fingerprint(fresh)
    with pytest.raises(ValueError, match=message):
        load_pruned(fresh, tmp_path / "digits.pt")
    assert_unchanged(fresh, before)


def test_an_error_from_torch_while_loading_puts_the_model_back(tmp_path, monkeypatch):
    model, _ = pruned_digits()
    save_pruned(model, tmp_path / "digits.pt")
    fresh = DigitsNet(width=8)
    before = fingerprint(fresh)

    def fail(*args, **kwargs):
        raise RuntimeError("torch failed")

    monkeypatch.setattr(nn.Module, "load_state_dict", fail)
    with pytest.raises(RuntimeError, match="torch failed"):
        load_pruned(fresh, tmp_path / "digits.pt")
    monkeypatch.undo()
    assert_unchanged(fresh, before)
    assert fresh(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_a_model_with_extra_state_cannot_be_saved(tmp_path):
    class WithExtraState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = PConv2d(1, 2, 3)

        def get_extra_state(self):
            return {"note": object()}

        def set_extra_state(self, state) -> None:
            pass

    with pytest.raises(ValueError, match="'_extra_state' is a dict, not a tensor"):
        save_pruned(WithExtraState(), tmp_path / "extra.pt")
    assert not (tmp_path / "extra.pt").exists()


# -- random networks --------------------------------------------------------------------------
def drop_random_channels(model: nn.Sequential, data: st.DataObject) -> None:
    """Remove random channels of random producers, with their batch norms and reader."""
    layers = list(model)
    producers = [i for i, layer in enumerate(layers[:-1]) if isinstance(layer, (PConv2d, PLinear))]
    for index in data.draw(st.lists(st.sampled_from(producers), min_size=1, unique=True), label="producers"):
        producer, per_channel = layers[index], []
        for layer in layers[index + 1 :]:
            if isinstance(layer, PBatchNorm2d):
                per_channel.append(layer)
            elif isinstance(layer, (PConv2d, PLinear)):
                reader = layer
                break
        channels = producer.num_output_channels
        drop = data.draw(
            st.lists(st.integers(0, channels - 1), min_size=1, max_size=channels - 1, unique=True), label="drop"
        )
        for layer in [producer, *per_channel]:
            layer.drop_output(drop)
        block = reader.in_features // channels if isinstance(reader, PLinear) else 1
        reader.drop_input(drop, features_per_channel=block)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(net=conv_nets(), data=st.data())
def test_random_pruned_nets_round_trip(net, data, tmp_path):
    model, shape = net
    fresh = copy.deepcopy(model)  # built the same way, from the same seed
    with torch.no_grad():  # and different weights, so that every one must be loaded
        for value in fresh.state_dict().values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
    inputs, labels = random_batch(model, shape)
    if data.draw(st.booleans(), label="by a TaylorPruner"):
        pruner = TaylorPruner(model, inputs[:1])
        model.train()
        F.cross_entropy(model(inputs), labels).backward()
        pruner.prune(data.draw(st.integers(1, 4), label="max_to_prune"))
    else:
        drop_random_channels(model, data)
    with torch.no_grad():
        model.train()(inputs)  # running statistics away from their initial values
    assert sizes(fresh) != sizes(model)
    path = tmp_path / f"net-{data.draw(st.integers(0, 10**9), label='file')}.pt"
    expected = outputs(model, inputs)
    save_pruned(model, path)

    load_pruned(fresh, path)

    assert_same_state(state_of(fresh), state_of(model))
    assert sizes(fresh) == sizes(model)
    assert torch.equal(outputs(fresh, inputs), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_model_on_the_gpu_is_saved_on_the_cpu_and_loads_where_asked(tmp_path):
    model, inputs = pruned_digits()
    model.cuda()
    save_pruned(model, tmp_path / "digits.pt")
    checkpoint = torch.load(tmp_path / "digits.pt", weights_only=True)
    assert all(value.device.type == "cpu" for value in checkpoint["state_dict"].values())
    fresh = load_pruned(DigitsNet(width=6), tmp_path / "digits.pt", map_location="cuda")
    assert all(value.is_cuda for value in fresh.state_dict().values())
    torch.testing.assert_close(outputs(fresh, inputs.cuda()), outputs(model, inputs.cuda()))
