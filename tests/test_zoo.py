"""Every CNN classifier of torchvision, converted and pruned (random weights, small inputs
where the network allows): the pruned network computes exactly what the network before
computes with the removed channels zeroed at their readers' inputs, in double precision; at
least 10% of the prunable channels go in three steps; FLOPs go down; the output keeps its
shape; and the pruned model exports to plain torch."""

from __future__ import annotations


import pytest
import torch
import torchvision

from prunable_nn import PrunableLayer, TaylorPruner, convert, count_flops, to_torch
from prunable_nn.trace import PrunableTracer, ShapeInterpreter
from nets import (
    assert_shapes_follow_sizes,
    logits,
    prune_and_check_masking,
    prune_rounds_and_check_masking,
)
from zoo import OTHER_MODELS, mean_square, other_model, tensors_of, timm_model

slow = pytest.mark.slow

#: name -> (input size, builder options). GoogLeNet is built without its auxiliary
#: classifiers: they run only in training, their wide hidden layers hold the lowest-ranked
#: channels, and pruning them leaves the eval FLOPs unchanged; Inception-v3 keeps its own,
#: so a branch that runs only in training is covered.
MODELS = {
    "alexnet": (64, {}),
    "vgg11_bn": (32, {}),
    "resnet18": (32, {}),
    "resnet50": (32, {}),
    "resnext50_32x4d": (32, {}),
    "wide_resnet50_2": (32, {}),
    "densenet121": (32, {}),
    "googlenet": (64, {"aux_logits": False, "init_weights": True}),
    "inception_v3": (299, {"aux_logits": True, "init_weights": True}),
    "mobilenet_v2": (32, {}),
    "mobilenet_v3_small": (32, {}),
    "efficientnet_b0": (32, {}),
    "mnasnet1_0": (32, {}),
    "regnet_x_400mf": (32, {}),
    "regnet_y_400mf": (32, {}),
    "shufflenet_v2_x1_0": (32, {}),
    "squeezenet1_1": (64, {}),
    "convnext_tiny": (32, {}),
}
SLOW = {"alexnet", "vgg11_bn", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "inception_v3", "convnext_tiny"}


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    size, options = MODELS[name]
    model = getattr(torchvision.models, name)(weights=None, num_classes=10, **options).double()
    return model, torch.randn(2, 3, size, size, dtype=torch.float64)


@pytest.mark.parametrize("name", [pytest.param(name, marks=slow) if name in SLOW else name for name in MODELS])
def test_torchvision_classifier_prunes_as_masking_says(name):
    model, inputs = build(name)
    pruner = TaylorPruner(model, inputs)
    assert not any(type(module) in (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear) for module in model.modules())
    flops = count_flops(model, inputs[:1])
    prune_rounds_and_check_masking(model, pruner, inputs)
    assert_shapes_follow_sizes(model)
    with torch.no_grad():
        assert logits(model.eval()(inputs)).shape == (2, 10)
    assert count_flops(model, inputs[:1]) < flops


def test_a_pruned_converted_resnet_exports_to_plain_torch(tmp_path):
    model, inputs = build("resnet18")
    pruner = TaylorPruner(model, inputs)
    prune_and_check_masking(model, pruner, inputs, max_to_prune=40)
    plain = to_torch(model).eval()
    assert not any(isinstance(module, PrunableLayer) for module in plain.modules())
    with torch.no_grad():
        expected = model.eval()(inputs)
        torch.testing.assert_close(plain(inputs), expected)
        program = torch.export.export(plain, (inputs,))
        torch.export.save(program, tmp_path / "resnet18.pt2")
        loaded = torch.export.load(tmp_path / "resnet18.pt2").module()
        torch.testing.assert_close(loaded(inputs), expected)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0", "inception_v3", "timm/efficientnet_b0", "yolov8n"])
def test_shapes_on_meta_tensors_are_the_real_ones(name):
    """The meta pass (with its shortcuts for batch norm, element-wise ops, broadcasting
    products and sums, reductions, concatenation and the prunable layers) gives every node
    the shape a real forward pass gives it."""
    if name == "yolov8n":
        pytest.importorskip("ultralytics")
        model, inputs = other_model(name)
    elif name.startswith("timm/"):
        model, inputs = timm_model(name.removeprefix("timm/"))
    else:
        model, inputs = build(name)
    convert(model)
    graph = PrunableTracer().trace(model.train())
    with torch.no_grad():
        model.eval()
        ShapeInterpreter(model, graph, on_meta=True).run(inputs)
        meta = {node: node.meta["shape"] for node in graph.nodes}
        ShapeInterpreter(model, graph, on_meta=False).run(inputs)
    assert meta == {node: node.meta["shape"] for node in graph.nodes}


# -- dense prediction, detection, video, YOLO --------------------------------------------------------
@slow
@pytest.mark.parametrize("name", list(OTHER_MODELS))
def test_dense_detection_video_and_yolo_models_prune_as_masking_says(name):
    """``benchmarks/zoo.py`` says how each is driven: detectors through their dense part.
    Estimates come from a mean-square stand-in for the task's loss on every output, in
    training mode; eval mode compares every output tensor (YOLO's decoded boxes included)."""
    if name == "yolov8n":
        pytest.importorskip("ultralytics")
    model, inputs = other_model(name)
    pruner = TaylorPruner(model, inputs)
    with torch.no_grad():
        shapes = [tensor.shape for tensor in tensors_of(model.eval()(inputs))]
    prune_rounds_and_check_masking(model, pruner, inputs, loss=mean_square)
    with torch.no_grad():
        assert [tensor.shape for tensor in tensors_of(model.eval()(inputs))] == shapes
