"""Each of torch's internals that prunable_nn relies on (:mod:`prunable_nn.compat`) still
behaves as relied on, with the installed torch."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from prunable_nn import compat


def test_swap_tensor_identity_keeps_the_object_its_attributes_and_its_holders():
    param = nn.Parameter(torch.arange(6.0))
    param.tag = "kept"
    optimizer = torch.optim.SGD([param], lr=0.1)
    compat.swap_tensor_identity(param, nn.Parameter(torch.tensor([1.0, 2.0])))
    assert optimizer.param_groups[0]["params"][0] is param
    assert param.tag == "kept" and isinstance(param, nn.Parameter) and param.requires_grad
    assert torch.equal(param.detach(), torch.tensor([1.0, 2.0]))
    (param * 3).sum().backward()  # a graph made after the swap backwards into it
    assert torch.equal(param.grad, torch.full((2,), 3.0))


def test_set_version_sets_the_counter_that_autograd_checks():
    leaf = torch.ones(3, requires_grad=True)
    saved = leaf.clone()
    out = saved.exp()  # saves its output... and exp's backward reads it
    version = out._version
    out.mul_(1.0)  # an in-place op that changes nothing
    compat.set_version(out, version)
    assert out._version == version
    out.sum().backward()  # without the reset: "modified by an inplace operation"
    assert torch.allclose(leaf.grad, torch.full((3,), torch.e))


def test_loss_scale_is_the_scalers_scale_as_a_tensor_before_and_after_its_first_use():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**7)
    assert compat.loss_scale(scaler).item() == 2.0**7  # no scale tensor yet
    scaler.scale(torch.ones(()))
    scale = compat.loss_scale(scaler)
    assert isinstance(scale, torch.Tensor) and scale.item() == 2.0**7
    scaler.update(2.0**3)
    assert compat.loss_scale(scaler).item() == 2.0**3


def test_forget_parameter_count_lets_lbfgs_step_with_smaller_parameters():
    param = nn.Parameter(torch.randn(6))
    optimizer = torch.optim.LBFGS([param], max_iter=2)

    def closure():
        optimizer.zero_grad()
        loss = param.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    optimizer.state.clear()
    compat.swap_tensor_identity(param, nn.Parameter(torch.randn(4)))
    with pytest.raises((AssertionError, RuntimeError)):
        optimizer.step(closure)  # the cached count of 6 elements
    optimizer.state.clear()
    compat.forget_parameter_count(optimizer)
    optimizer.step(closure)
    assert param.shape == (4,)


def test_innermost_traced_module_names_where_a_trace_failed():
    class Fails(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return x
            return -x

    model = nn.Sequential(nn.Identity(), nn.Sequential(nn.ReLU(), Fails()))
    tracer = fx.Tracer()
    with pytest.raises(Exception):
        tracer.trace(model)
    assert compat.innermost_traced_module(tracer) == "1.1"


def test_module_without_init_shares_the_instance_dict_it_is_given():
    conv = nn.Conv2d(3, 4, 3)
    twin = compat.module_without_init(nn.Conv2d, dict(vars(conv)))
    assert twin.weight is conv.weight and twin.kernel_size == (3, 3)
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(twin(x), conv(x))
