"""Saving a pruned model to one safe file, and loading it into a freshly built model.

A pruned model no longer fits its class: ``DigitsNet().load_state_dict(pruned_state)`` fails
on every shrunken tensor, and pickling the whole model (``torch.save(model)``) writes code
that ``torch.load`` must run to read it back, which is unsafe for a file from elsewhere.
:func:`save_pruned` writes the sizes of every layer next to the weights, and
:func:`load_pruned` resizes a freshly built model of the same class to those sizes before it
loads the weights. The file holds data only and loads with ``torch.load(path,
weights_only=True)``.

File format (version 1)
-----------------------
One ``torch.save`` file of a ``dict`` holding only dicts, lists, strings, ints, floats,
bools, ``None`` and tensors::

    {
        "format": "prunable_nn.pruned_model",   # FORMAT
        "version": 1,                           # VERSION
        "model_class": "DigitsNet",             # type(model).__name__, for messages only
        "layers": {                             # every layer of a prunable kind, by
            "features.0": {                     # its name in named_modules() ("" = the root)
                "kind": "Conv2d",
                "prunable": True,               # a PConv2d, or a plain nn.Conv2d
                "in_channels": 1, "out_channels": 17, "groups": 1,          # sizes
                "kernel_size": [5, 5], "stride": [1, 1], "padding": [0, 0],  # fixed
                "dilation": [1, 1], "padding_mode": "zeros",
            },
            "features.1": {"kind": "BatchNorm2d", "prunable": True,
                           "num_features": 17, "eps": 1e-05},
            "classifier.1": {"kind": "Linear", "prunable": True,
                             "in_features": 9792, "out_features": 10},
        },
        "state_dict": {"features.0.weight": <tensor>, ...},  # model.state_dict(), detached,
    }                                                       # on the CPU

A layer is any module of a kind that can lose channels (:mod:`prunable_nn.kinds`: torch's
convolutions, normalisations and ``nn.Linear``, their variants, layers registered with
``register_layer``; prunable twins included), recorded under the name of its nearest
registered class (``"Conv2d"`` for a ``PConv2d``). The kind says what its *sizes* are, what
pruning changes (the channel and feature counts, ``groups`` of a depthwise convolution), and
its *fixed* attributes, what pruning never changes and the weights alone do not determine;
they must match the model's. ``padding`` is a list of ints or a string (``"same"``,
``"valid"``). Tensors whose dim 0 counts the output channels and no size gives (``gain``
of timm's ``ScaledStdConv2d``) have the model's shape but for dim 0. A layer registered under several names is recorded once,
under its first name; the state dict holds it under every name, as ``state_dict()`` does.

What loading accepts
--------------------
The model must have the file's layers, under the same names, of the same kinds, with the same
fixed attributes and the same state-dict keys; every tensor of the file must have the shape
that its layer's saved sizes give (a tensor of no layer: the shape it has in the model).
Every width may differ, including the input channels of the first layer: they are the file's
after loading. A model built with other widths therefore loads (``DigitsNet(width=8)`` takes
the file of a pruned ``DigitsNet(width=6)``); attributes of the model other than its layers
(``DigitsNet.in_channels``, say) stay as built, so build it with the arguments of the saved one.
``groups`` may differ only between depthwise convolutions. Whether a layer is prunable is not
checked and does not change: loading does not convert.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from typing import IO, Any

import torch
from torch import nn

from .kinds import ConvKind, LayerKind, kind_of, record_kinds, registered_class
from .kinds.conv import is_depthwise
from .layers import PrunableLayer
from .module import PrunableModule

FORMAT = "prunable_nn.pruned_model"
VERSION = 1

#: Where a checkpoint is: a path, or a binary file object as ``torch.save``/``torch.load`` take.
FileLike = str | os.PathLike | IO[bytes]
MapLocation = Callable[[torch.types.Storage, str], torch.types.Storage] | torch.device | str | dict[str, str] | None

# -- saving -----------------------------------------------------------------------------------
def save_pruned(model: nn.Module, path: FileLike) -> None:
    """Write ``model``'s layer sizes and weights to ``path`` (format: the module docstring).

    ``model`` may hold prunable layers, plain ones (a :func:`~prunable_nn.to_torch` copy) or
    both. It is not changed. Raises ``ValueError`` before writing anything when its state
    dict holds something that is not a tensor (a module's extra state), which a file that
    ``torch.load(weights_only=True)`` reads cannot hold.
    """
    state = model.state_dict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"cannot save {type(model).__name__}: its state_dict entry {key!r} is a "
                f"{type(value).__name__}, not a tensor"
            )
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "model_class": type(model).__name__,
        "layers": {name: _record(layer) for name, layer in _layers(model).items()},
        "state_dict": {key: value.detach().cpu() for key, value in state.items()},
    }
    _check_checkpoint(checkpoint, source=f"the checkpoint of {type(model).__name__}")
    _check_tensor_shapes(checkpoint, source="the model")
    torch.save(checkpoint, path)


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer of a prunable kind in ``model`` (prunable or not), by its first name."""
    return {name: module for name, module in model.named_modules() if _kind(module) is not None}


def _kind(module: nn.Module) -> LayerKind | None:
    kind = kind_of(module)
    return kind if kind is not None and kind.prunable else None


def _kind_name(module: nn.Module) -> str:
    return registered_class(module).__name__


def _record(layer: nn.Module) -> dict[str, Any]:
    """What the file says about one layer: its kind, sizes and fixed attributes."""
    kind = _kind(layer)
    record: dict[str, Any] = {"kind": _kind_name(layer), "prunable": isinstance(layer, PrunableLayer)}
    record.update(kind.read_sizes(layer))
    for attr in kind.fixed:
        record[attr] = _attribute(layer, attr)
    return record


def _attribute(layer: nn.Module, attr: str) -> Any:
    """``layer.attr`` as the file holds it: tuples as lists, ``eps`` as a float."""
    value = getattr(layer, attr)
    if attr == "eps":
        return float(value)
    return [*value] if isinstance(value, tuple) else value


# -- loading ----------------------------------------------------------------------------------
def load_pruned(model: nn.Module, path: FileLike, map_location: MapLocation = None) -> nn.Module:
    """Resize the freshly built ``model`` to the layer sizes in ``path``, load its weights
    into it, and return ``model``; in eval mode it then computes exactly what the saved model
    computed.

    ``model`` is of the saved model's class and built with its arguments (widths may differ:
    see "What loading accepts" in the module docstring). Each layer keeps its class (a plain
    ``nn.Conv2d`` stays plain, a ``PConv2d`` stays prunable); its size attributes become the
    file's and its parameters and buffers become the file's tensors, as
    ``load_state_dict(state, assign=True)`` makes them: with the file's dtypes, on the device
    ``map_location`` gives (as for ``torch.load``; by default the CPU, where they were saved),
    and every parameter a new ``nn.Parameter`` with the model's ``requires_grad``. So move the
    model with ``.to()`` and make its optimizer after loading. A model built on the meta
    device (``with torch.device("meta"):``) loads too: only non-persistent buffers, which the
    file does not hold, stay as built. A parameter tied between two modules (one tensor
    under two keys of different layers) comes back as two parameters sharing memory.

    Taylor estimates of prunable layers are reset and a ``PrunableModule``'s own pruner is
    dropped (it is made again on first use): both describe the channels before loading. A
    ``TaylorPruner`` of your own made before loading is stale; make it after.

    Raises ``ValueError`` naming the layer and both values when the file is not a checkpoint
    of this format (or is truncated, or holds pickled objects other than data, which
    ``torch.load(weights_only=True)`` refuses without running them) or does not fit the
    model. Everything is checked before anything changes: after an error the model is
    exactly as it was.
    """
    checkpoint = _read(path, map_location)
    source = f"{_describe_path(path)} (a {checkpoint['model_class']})"
    layers = _layers(model)
    _check_layers(checkpoint, layers, model, source)
    state = checkpoint["state_dict"]
    shapes = _check_tensor_shapes(checkpoint, source, model)
    _resize_and_assign(model, layers, checkpoint["layers"], shapes, state)
    for module in model.modules():
        if isinstance(module, PrunableLayer):
            module.reset_estimates()
        if isinstance(module, PrunableModule):
            module.__dict__.pop("_pruner", None)
    return model


def _describe_path(path: FileLike) -> str:
    return repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(path)


def _read(path: FileLike, map_location: MapLocation) -> dict[str, Any]:
    """The checkpoint in ``path``, checked for form; ``ValueError`` if it is not one."""
    where = _describe_path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # not a question of the file's content (a truncated zip is an OSError too)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{where} is not a prunable_nn checkpoint: torch.load(weights_only=True) refused it, "
            f"running nothing: {_unsafe_content(path)}"
        ) from error
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(
            f"{where} is not a readable prunable_nn checkpoint (truncated or corrupt?): "
            f"{type(error).__name__}: {first_line}"
        ) from error
    _check_checkpoint(checkpoint, source=where)
    return checkpoint


def _unsafe_content(path: FileLike) -> str:
    """What in ``path`` ``torch.load(weights_only=True)`` may not run: its pickled globals other
    than data, as ``torch.serialization.get_unsafe_globals_in_checkpoint`` finds them (the
    error's own text is torch's to word, and changes between releases)."""
    try:
        if hasattr(path, "seek"):
            path.seek(0)
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 (not even a readable archive)
        names = []
    if not names:
        return "it is corrupt, or holds pickled objects other than data"
    return f"it holds pickled objects other than data: {', '.join(names)}"


def _check_checkpoint(checkpoint: Any, source: str) -> None:
    """Raise ``ValueError`` unless ``checkpoint`` has the form of the module docstring."""
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != FORMAT:
        tensors = checkpoint.values() if isinstance(checkpoint, Mapping) else ()
        if tensors and all(isinstance(value, torch.Tensor) for value in tensors):
            hint = " (it holds a plain state_dict; write the file with prunable_nn.save_pruned)"
        else:
            hint = ""
        if not isinstance(checkpoint, Mapping):
            found = f"a {type(checkpoint).__name__}"
        elif "format" in checkpoint:
            found = f"format {checkpoint['format']!r}"
        else:
            found = "a dict without a 'format' entry"
        raise ValueError(f"{source} is not a prunable_nn checkpoint: expected format {FORMAT!r}, found {found}{hint}")
    version = checkpoint.get("version")
    if type(version) is not int or version != VERSION:
        newer = " (written by a newer prunable_nn?)" if type(version) is int and version > VERSION else ""
        raise ValueError(f"{source}: checkpoint version {version!r} is not supported, only {VERSION}{newer}")
    expected = {"format", "version", "model_class", "layers", "state_dict"}
    if set(checkpoint) != expected:
        raise ValueError(f"{source}: the checkpoint's entries are {sorted(checkpoint)}, expected {sorted(expected)}")
    if not isinstance(checkpoint["model_class"], str):
        raise ValueError(f"{source}: model_class is {checkpoint['model_class']!r}, not a string")
    layers, state = checkpoint["layers"], checkpoint["state_dict"]
    if not isinstance(layers, Mapping) or not all(isinstance(name, str) for name in layers):
        raise ValueError(f"{source}: 'layers' is not a dict of layer names")
    for name, record in layers.items():
        _check_record(name, record, source)
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: 'state_dict' is a {type(state).__name__}, not a dict")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")


def _check_record(name: str, record: Any, source: str) -> None:
    """Raise ``ValueError`` unless ``record`` describes a layer as :func:`_record` does."""
    where = f"{source}: layer {_label(name)}"
    kinds = record_kinds()
    if not isinstance(record, Mapping) or record.get("kind") not in kinds:
        kind = record.get("kind") if isinstance(record, Mapping) else record
        raise ValueError(f"{where} has kind {kind!r}; expected one of {sorted(kinds)}")
    name = record["kind"]
    kind = kinds[name]
    expected = {"kind", "prunable", *kind.sizes, *kind.fixed}
    if set(record) != expected:
        raise ValueError(f"{where} ({name}) has entries {sorted(record)}, expected {sorted(expected)}")
    if type(record["prunable"]) is not bool:
        raise ValueError(f"{where}: 'prunable' is {record['prunable']!r}, not a bool")
    for attr in kind.sizes:
        if type(record[attr]) is not int or record[attr] < 1:
            raise ValueError(f"{where} ({name}): {attr}={record[attr]!r} is not a positive int")
    problem = kind.check_record(record)
    if problem is not None:
        raise ValueError(f"{where} ({name}): {problem}")


def _label(name: str) -> str:
    return repr(name) if name else "'' (the model itself)"


def _and_more(names: list[str]) -> str:
    """What follows the first of ``names`` in a message: how many more, and up to five of them."""
    return f" (and {len(names) - 1} more: {names[1:6]})" if len(names) > 1 else ""


def _check_layers(checkpoint: Mapping[str, Any], layers: dict[str, nn.Module], model: nn.Module, source: str) -> None:
    """Raise ``ValueError`` unless ``model``'s layers are the file's: same names, kinds and
    fixed attributes, and ``groups`` changed only between depthwise convolutions."""
    saved = checkpoint["layers"]
    mine = f"the {type(model).__name__}"
    missing = [name for name in saved if name not in layers]
    if missing:
        name = missing[0]
        raise ValueError(
            f"layer {_label(name)} ({saved[name]['kind']}) of {source} is missing from {mine}"
            + _and_more(missing)
        )
    extra = [name for name in layers if name not in saved]
    if extra:
        name = extra[0]
        raise ValueError(
            f"{mine} has layer {_label(name)} ({type(layers[name]).__name__}) that {source} does not have"
            + _and_more(extra)
        )
    for name, record in saved.items():
        layer = layers[name]
        kind, kind_name = _kind(layer), _kind_name(layer)
        if kind_name != record["kind"]:
            raise ValueError(
                f"layer {_label(name)} is a {record['kind']} in {source} but a "
                f"{type(layer).__name__} ({kind_name}) in {mine}"
            )
        for attr in kind.fixed:
            if _attribute(layer, attr) != record[attr]:
                raise ValueError(
                    f"layer {_label(name)} ({kind_name}) has {attr}={record[attr]!r} in {source} but "
                    f"{attr}={_attribute(layer, attr)!r} in {mine}"
                )
        saved_depthwise = record.get("groups", 1) > 1 and record["groups"] == record["in_channels"] == record["out_channels"]
        if (
            isinstance(kind, ConvKind)
            and layer.groups != record["groups"]
            and not (is_depthwise(layer) and saved_depthwise)
        ):
            raise ValueError(
                f"layer {_label(name)} ({kind_name}) has groups={record['groups']} (in_channels="
                f"{record['in_channels']}, out_channels={record['out_channels']}) in {source} but "
                f"groups={layer.groups} (in_channels={layer.in_channels}, out_channels="
                f"{layer.out_channels}) in {mine}; pruning changes groups only of a depthwise "
                "convolution"
            )


def _layer_shapes(record: Mapping[str, Any], reference: torch.Tensor, local: str) -> dict[str, tuple[int, ...]]:
    """The shapes of a layer's tensors that its sizes in ``record`` give, by local name; a
    tensor ``local`` whose dim 0 counts the output channels has ``reference``'s other dims."""
    kind = record_kinds()[record["kind"]]
    shapes = kind.tensor_shapes(record)
    if local in kind.channel_tensors():
        shapes[local] = (record[kind.out_size], *reference.shape[1:])
    return shapes


def _check_tensor_shapes(
    checkpoint: Mapping[str, Any], source: str, model: nn.Module | None = None
) -> dict[str, tuple[int, ...]]:
    """The shape every tensor must have after loading, by state-dict key; ``ValueError``
    unless the file's tensors have them and, given a ``model``, its state-dict keys are the
    file's. Without ``model`` (on saving), check only the tensors of the file's layers."""
    saved_layers, state = checkpoint["layers"], checkpoint["state_dict"]
    if model is None:
        owners = {name: name for name in saved_layers}
        current: dict[str, torch.Tensor] = {}
    else:
        first_names = {id(module): name for name, module in _layers(model).items()}
        owners = {
            name: first_names[id(module)]
            for name, module in model.named_modules(remove_duplicate=False)
            if id(module) in first_names
        }
        current = model.state_dict(keep_vars=True)
        only_file, only_model = sorted(set(state) - set(current)), sorted(set(current) - set(state))
        if only_file or only_model:
            raise ValueError(
                f"the state_dict keys of {source} and of the {type(model).__name__} differ: "
                f"only in the file: {only_file[:8]}{' ...' if len(only_file) > 8 else ''}; "
                f"only in the model: {only_model[:8]}{' ...' if len(only_model) > 8 else ''}"
            )
    shapes: dict[str, tuple[int, ...]] = {}
    for key, tensor in state.items():
        prefix, _, local = key.rpartition(".")
        owner = owners.get(prefix)
        layer_shapes = _layer_shapes(saved_layers[owner], current.get(key, tensor), local) if owner is not None else {}
        if local in layer_shapes:
            expected = layer_shapes[local]
            if tuple(tensor.shape) != expected:
                record = saved_layers[owner]
                sizes = ", ".join(f"{attr}={record[attr]}" for attr in record_kinds()[record["kind"]].sizes)
                raise ValueError(
                    f"layer {_label(owner)} ({record['kind']}): {source} holds {key} of shape "
                    f"{tuple(tensor.shape)}, but its sizes ({sizes}) give {expected}"
                )
        elif key in current:
            expected = tuple(current[key].shape)
            if tuple(tensor.shape) != expected:
                raise ValueError(
                    f"{key}: {source} holds shape {tuple(tensor.shape)}, the {type(model).__name__} "
                    f"has {expected}, and it is no size of a layer"
                )
        else:
            expected = tuple(tensor.shape)
        shapes[key] = expected
    return shapes


def _resize_and_assign(
    model: nn.Module,
    layers: dict[str, nn.Module],
    records: Mapping[str, Mapping[str, Any]],
    shapes: dict[str, tuple[int, ...]],
    state: Mapping[str, torch.Tensor],
) -> None:
    """Give every layer the saved sizes and placeholders of the saved shapes, then assign the
    file's tensors. Everything was checked; should torch still raise, the model is put back."""
    backup = [
        (module, dict(module._parameters), dict(module._buffers), dict(vars(module)))
        for module in model.modules()
    ]
    try:
        for name, layer in layers.items():
            record = records[name]
            _kind(layer).set_sizes(layer, record)
            prefix = f"{name}." if name else ""
            for slots in (layer._parameters, layer._buffers):
                for local, tensor in slots.items():
                    key = prefix + local
                    if tensor is None or key not in shapes or tuple(tensor.shape) == shapes[key]:
                        continue
                    placeholder = torch.empty(shapes[key], dtype=tensor.dtype, device="meta")
                    if isinstance(tensor, nn.Parameter):
                        placeholder = nn.Parameter(placeholder, requires_grad=tensor.requires_grad)
                    slots[local] = placeholder
        model.load_state_dict(dict(state), strict=True, assign=True)
    except BaseException:
        for module, parameters, buffers, attributes in backup:
            module.__dict__.clear()
            module.__dict__.update(attributes)
            module._parameters.clear()
            module._parameters.update(parameters)
            module._buffers.clear()
            module._buffers.update(buffers)
        raise
