"""timm's CNN zoo, each family at its smallest variant (random weights, constant-initialised
ones drawn at random so that no residual branch starts at zero; 64x64 inputs, double
precision): the pruned network computes exactly what the network before computes with the
removed channels zeroed at their readers' inputs, at least 10% of the prunable units go in
three steps, and the output keeps its shape. Where nothing can go, the report says why.

Channels made dead (zero scale and shift at every batch norm, timm's ``BatchNormAct2d``
included) have zero estimates: they are the first to go, and the function does not change.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from nets import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    prune_and_check_masking,
    randomize_constant_parameters,
    tensors_of,
    training_loss,
)
from prunable_nn import TaylorPruner, count_flops
from prunable_nn.kinds import NormKind, kind_of

timm = pytest.importorskip("timm")
slow = pytest.mark.slow

#: One model per family, the smallest; ``True`` marks those slower than a second or two here.
MODELS = {
    "resnet10t": False, "resnet18d": False, "seresnext26t_32x4d": False, "ecaresnet26t": False,
    "resnet50_gn": False, "efficientnet_b0": False, "tf_efficientnet_b0": False, "efficientnetv2_rw_t": True,
    "tinynet_e": False, "mobilenetv2_050": False, "mobilenetv3_small_050": False, "mobilenetv4_conv_small": False,
    "mnasnet_050": False, "fbnetc_100": False, "spnasnet_100": False, "lcnet_050": False, "mixnet_s": False,
    "ghostnet_050": False, "ghostnetv2_100": False, "repghostnet_050": False, "regnetx_002": False,
    "regnety_002": False, "regnetz_b16": False, "densenet121": False, "inception_v3": True, "dpn68": False,
    "cspresnet50": False, "cspdarknet53": True, "darknet17": False, "cs3darknet_s": False, "vovnet39a": True,
    "ese_vovnet19b_dw": False, "repvgg_a0": False, "mobileone_s0": True, "gernet_s": False, "convnext_atto": False,
    "dla34": False, "hrnet_w18_small": False, "res2net50_14w_8s": True, "resnest14d": False, "selecsls42b": True,
    "rexnet_100": False, "hardcorenas_a": False, "legacy_xception": True, "xception41": True, "skresnet18": False,
    "hgnetv2_b0": False, "inception_next_atto": False, "vgg11": True, "resnetv2_50": True, "tresnet_m": True,
    "gcresnext26ts": False, "mobilenetv1_100": False, "fbnetv3_b": False, "starnet_s050": False, "rdnet_tiny": True,
    "edgenext_xx_small": False, "mobilevit_xxs": False, "efficientvit_b0": False, "fastvit_t8": False,
}
#: Models whose convolutions cannot lose a channel, with what the report says.
NOTHING_PRUNABLE = {
    "nf_resnet26": "standardised over each output channel's whole fan-in",
    "convnextv2_atto": "normalises across its channels",
}
INPUT_SIZE = {"inception_v3": 96}


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = randomize_constant_parameters(timm.create_model(name, num_classes=10).double())
    size = INPUT_SIZE.get(name, 64)
    return model, torch.randn(2, 3, size, size, dtype=torch.float64)


@pytest.mark.parametrize("name", [pytest.param(name, marks=slow) if heavy else name for name, heavy in MODELS.items()])
def test_timm_model_prunes_as_masking_says(name):
    model, inputs = build(name)
    with torch.no_grad():
        shape = model.eval()(inputs).shape
    pruner = TaylorPruner(model, inputs)
    total = pruner.num_prunables
    assert total > 0, pruner.report()
    flops = count_flops(model, inputs[:1])
    removed = 0
    for _ in range(3):
        removals = prune_and_check_masking(model, pruner, inputs, max_to_prune=math.ceil(0.04 * total))
        removed += sum(len(removal.indices) for removal in removals)
    assert removed >= 0.1 * total
    assert pruner.num_prunables == total - removed
    with torch.no_grad():
        assert model.eval()(inputs).shape == shape
    assert count_flops(model, inputs[:1]) < flops


@pytest.mark.parametrize("name", list(NOTHING_PRUNABLE))
def test_a_timm_model_that_cannot_lose_a_channel_says_why(name):
    model, inputs = build(name)
    pruner = TaylorPruner(model, inputs)
    conv_chains = [chain for chain in pruner.chains if any(type(layer).__name__.endswith("Conv2d") for layer in chain.producers)]
    assert not conv_chains, [chain.name for chain in conv_chains]
    assert NOTHING_PRUNABLE[name] in pruner.report()


def kill_channels(model: torch.nn.Module) -> None:
    """Zero the scale and shift of the first quarter of the channels of every batch norm."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(kind_of(module), NormKind) and module.affine:
                dead = max(1, module.num_features // 4)
                module.weight[:dead] = 0
                module.bias[:dead] = 0


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_b0", "efficientnetv2_rw_t", "tinynet_a", "resnet18d"])
def test_dead_channels_go_first_and_the_function_stays(name):
    model, inputs = build(name)
    kill_channels(model)
    pruner = TaylorPruner(model, inputs)
    state = copy.deepcopy(model.state_dict())
    training_loss(model, inputs, torch.arange(len(inputs)) % 3).backward()
    model.load_state_dict(state)  # the batch norms' running statistics as they were
    with torch.no_grad():
        expected = tensors_of(model.eval()(inputs))
    removals = pruner.prune(max_to_prune=16)
    assert sum(len(removal.indices) for removal in removals) == 16
    with torch.no_grad():
        for got, want in zip(tensors_of(model.eval()(inputs)), expected):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
