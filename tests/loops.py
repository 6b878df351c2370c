"""Helpers of the training-loop tests: a small network in float64, a prunable copy with the
same weights, and eq. 8 computed independently, from the plain copy's batch-norm outputs
(captured by forward hooks) and their gradients from ``torch.autograd.grad``."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from prunable_nn import TaylorPruner

DOUBLE = torch.float64
ESTIMATORS = ("1", "4")  # the batch norms, whose outputs the next layers read


def plain_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    ).to(DOUBLE)


def batch(size: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 6, 6, dtype=DOUBLE, generator=generator), torch.randint(0, 4, (size,), generator=generator)


def converted() -> tuple[nn.Sequential, nn.Sequential, TaylorPruner]:
    """A plain reference and a prunable model with the same weights, and its pruner."""
    reference = plain_model()
    model = copy.deepcopy(reference)
    return reference, model, TaylorPruner(model, batch()[0])


def eq8(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return (activation * grad).mean(dim=(2, 3)).abs().mean(dim=0)


def captured(reference: nn.Module) -> dict[str, torch.Tensor]:
    """The outputs of the estimator layers at the next forward of ``reference``."""
    outputs: dict[str, torch.Tensor] = {}
    for name in ESTIMATORS:
        reference.get_submodule(name).register_forward_hook(lambda _m, _a, out, name=name: outputs.__setitem__(name, out))
    return outputs


def reference_run(reference: nn.Module, x: torch.Tensor):
    """The forward of ``reference`` on ``x`` as an input that requires a gradient: its output,
    that input, and the estimators' outputs (by name, and in ESTIMATORS order)."""
    outputs = captured(reference)
    xr = x.clone().requires_grad_()
    out = reference(xr)
    return out, xr, outputs, [outputs[name] for name in ESTIMATORS]


def expected_estimates(outputs: dict[str, torch.Tensor], *grads: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Eq. 8 on the summed gradients ``grads`` (one tuple per backward pass, in ESTIMATORS order)."""
    return {
        name: eq8(outputs[name].detach(), sum(grad[index] for grad in grads))
        for index, name in enumerate(ESTIMATORS)
    }


def assert_estimates(model: nn.Module, expected: dict[str, torch.Tensor], examples: int) -> None:
    for name, value in expected.items():
        layer = model.get_submodule(name)
        assert layer.examples_seen == examples, name
        torch.testing.assert_close(layer.taylor_estimates, value, msg=name)


def float_model() -> tuple[nn.Sequential, TaylorPruner]:
    model = plain_model().float()
    return model, TaylorPruner(model, batch()[0].float())


def scaled_steps(
    model: nn.Module, scaler: torch.amp.GradScaler, batches: list[tuple[torch.Tensor, torch.Tensor, float]]
) -> list[float]:
    """Training steps under bfloat16 autocast through ``scaler``; each batch's loss is
    multiplied by its factor (``inf``: an overflowed step). Returns the scale of each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scales = []
    for x, y, factor in batches:
        scales.append(scaler.get_scale())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x.float()), y) * factor
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return scales
