"""The training loops people run, around a pruner: several backward passes through one
forward, gradient penalties, frozen layers, EMA copies, every optimizer of ``torch.optim``,
``channels_last``, mixed precision (``torch.compile``: ``test_compile.py``).

Each estimate is checked against an independent computation: the same weights in a plain
torch copy of the model, its batch-norm outputs captured by forward hooks, their gradients
from ``torch.autograd.grad`` of the total objective, and eq. 8 written out.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from loops import (
    DOUBLE, ESTIMATORS, assert_estimates, batch, converted, expected_estimates, float_model, plain_model, reference_run,
    scaled_steps,
)
from nets import assert_same_snapshot, snapshot
from prunable_nn import TaylorPruner, check_in_step, no_estimates


# -- several backward passes through one forward ------------------------------------------------
def test_two_losses_backward_separately_give_the_estimate_of_their_sum():
    reference, model, _ = converted()
    x, y = batch()
    out, _, outputs, acts = reference_run(reference, x)
    first = torch.autograd.grad(F.cross_entropy(out, y), acts, retain_graph=True)
    second = torch.autograd.grad(out.pow(2).mean(), acts)

    out = model(x)
    F.cross_entropy(out, y).backward(retain_graph=True)
    out.pow(2).mean().backward()
    assert_estimates(model, expected_estimates(outputs, first, second), examples=5)


@pytest.mark.parametrize("excluded", [False, True])
def test_a_saliency_pass_before_the_loss_counts_unless_excluded(excluded):
    reference, model, _ = converted()
    x, y = batch()
    out, _, outputs, acts = reference_run(reference, x)
    saliency = torch.autograd.grad(out.max(dim=1).values.sum(), acts, retain_graph=True)
    loss = torch.autograd.grad(F.cross_entropy(out, y), acts)
    expected = expected_estimates(outputs, loss) if excluded else expected_estimates(outputs, saliency, loss)

    xm = x.clone().requires_grad_()
    out = model(xm)
    with no_estimates() if excluded else contextlib.nullcontext():
        torch.autograd.grad(out.max(dim=1).values.sum(), xm, retain_graph=True)
    F.cross_entropy(out, y).backward()
    assert_estimates(model, expected, examples=5)


def test_a_gradient_penalty_counts_both_passes_and_leaves_plain_numbers():
    reference, model, _ = converted()
    x, y = batch()
    out, xr, outputs, acts = reference_run(reference, x)
    first = torch.autograd.grad(out.sum(), acts, retain_graph=True)
    (input_grad,) = torch.autograd.grad(out.sum(), xr, create_graph=True)
    second = torch.autograd.grad(F.cross_entropy(out, y) + input_grad.pow(2).sum(), acts)

    xm = x.clone().requires_grad_()
    out = model(xm)
    (input_grad,) = torch.autograd.grad(out.sum(), xm, create_graph=True)
    (F.cross_entropy(out, y) + input_grad.pow(2).sum()).backward()
    assert_estimates(model, expected_estimates(outputs, first, second), examples=5)
    for name in ESTIMATORS:  # no autograd graph kept alive by the estimates
        layer = model.get_submodule(name)
        sums = layer.estimate_totals.sums
        assert not sums.requires_grad and sums.grad_fn is None


def test_a_forward_counts_once_whatever_the_number_of_passes():
    _, model, pruner = converted()
    x, y = batch()
    out = model(x)
    for _ in range(3):
        F.cross_entropy(out, y).backward(retain_graph=True)
    del out  # the graph goes: its forward is counted
    assert [model.get_submodule(name).examples_seen for name in ESTIMATORS] == [5, 5]


# -- frozen layers ------------------------------------------------------------------------------
def trained_with_frozen(*frozen: int) -> tuple[nn.Sequential, TaylorPruner]:
    """The converted model after one backward pass with the layers ``frozen`` frozen."""
    _, model, pruner = converted()
    for index in frozen:
        model[index].requires_grad_(False)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    return model, pruner


def test_a_frozen_stem_is_skipped_and_the_rest_pruned():
    model, pruner = trained_with_frozen(0, 1)
    stem, rest = pruner.chains[0], pruner.chains[1]
    removals = pruner.prune(3)
    assert [removal.chain for removal in removals] == [rest.name]
    assert stem.num_channels == 8 and rest.num_channels == 3
    reason = pruner.skipped[stem.name]
    assert "no gradient reached PBatchNorm2d '1'" in reason and "frozen" in reason
    assert f"{stem.name}: skipped by the last prune, no gradient reached PBatchNorm2d '1'" in pruner.report()


def test_a_frozen_layer_after_a_trainable_one_is_pruned_and_stays_frozen():
    model, pruner = trained_with_frozen(3, 4)
    assert model[4].taylor_estimates is not None  # the gradient reaches its output
    frozen_chain = pruner.chains[1]
    pruner.prune(8)
    assert frozen_chain.num_channels < 6 and not pruner.skipped
    assert model[3].weight.shape[0] == frozen_chain.num_channels
    assert not any(param.requires_grad for param in (*model[3].parameters(), *model[4].parameters()))


def test_a_strict_pruner_refuses_a_frozen_stem_and_changes_nothing():
    model, pruner = trained_with_frozen(0, 1)
    pruner.strict = True
    before = snapshot(model, pruner)
    with pytest.raises(RuntimeError, match="chain '0' has no Taylor estimates yet: no gradient reached PBatchNorm2d '1'"):
        pruner.prune(3)
    assert_same_snapshot(before, snapshot(model, pruner))


# -- EMA and other copies -----------------------------------------------------------------------
def ema_of(model: nn.Module) -> AveragedModel:
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)


def train_with_ema(model: nn.Module, ema: AveragedModel, steps: int = 3) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        x, y = batch(seed=step)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        ema.update_parameters(model)
    return optimizer


def test_the_estimates_are_not_buffers_and_an_ema_updates():
    _, model, _ = converted()
    ema = ema_of(model)
    train_with_ema(model, ema)  # AveragedModel walks the buffers at every update
    assert model[1].taylor_estimates is not None
    names = [name for name, _ in model.named_buffers()] + list(model.state_dict())
    assert not any("taylor" in name for name in names)


@pytest.mark.parametrize("made_before_the_pruner", [False, True])
def test_prune_also_keeps_an_ema_in_step(made_before_the_pruner):
    reference = plain_model()
    model = copy.deepcopy(reference)
    ema = ema_of(model) if made_before_the_pruner else None  # holds plain torch layers
    pruner = TaylorPruner(model, batch()[0])
    ema = ema or ema_of(model)
    optimizer = train_with_ema(model, ema)
    before = {name: tensor.clone() for name, tensor in ema.module.state_dict().items()}
    removals = pruner.prune(5, optimizer, also=[ema])
    check_in_step(ema, model)
    assert {removal.layers[0] for removal in removals} == {"0", "3"}
    for conv in ("0", "3"):
        rows = [removal.indices for removal in removals if removal.layers[0] == conv][0]
        columns = [index for removal in removals for index in removal.inputs.get(conv, ())]
        old = before[f"{conv}.weight"]
        kept_rows = [index for index in range(old.shape[0]) if index not in rows]
        kept_columns = [index for index in range(old.shape[1]) if index not in columns]
        torch.testing.assert_close(ema.module.get_submodule(conv).weight, old[kept_rows][:, kept_columns])
    train_with_ema(model, ema)  # and the averaging goes on


def test_a_copy_equal_to_the_model_stays_equal_to_it():
    _, model, pruner = converted()
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    twin = copy.deepcopy(model)
    pruner.prune(6, also=[twin])
    for (name, ours), theirs in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_a_stale_copy_is_named_before_anything_changes():
    _, model, pruner = converted()
    ema = ema_of(model)
    train_with_ema(model, ema)
    pruner.prune(2)  # the EMA left out
    with pytest.raises(ValueError, match=r"out of step with the model: '0.weight' has shape \(\d, 3, 3, 3\) there"):
        check_in_step(ema, model)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    before = snapshot(model, pruner)
    with pytest.raises(ValueError, match="out of step"):
        pruner.prune(2, also=[ema])
    assert_same_snapshot(before, snapshot(model, pruner))


# -- optimizers ---------------------------------------------------------------------------------
OPTIMIZERS = {
    "SGD": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "Adam": lambda params: torch.optim.Adam(params, lr=0.01, amsgrad=True),
    "AdamW": lambda params: torch.optim.AdamW(params, lr=0.01),
    "Adamax": lambda params: torch.optim.Adamax(params, lr=0.01),
    "NAdam": lambda params: torch.optim.NAdam(params, lr=0.01),
    "RAdam": lambda params: torch.optim.RAdam(params, lr=0.01),
    "Adagrad": lambda params: torch.optim.Adagrad(params, lr=0.01),
    "Adadelta": lambda params: torch.optim.Adadelta(params),
    "RMSprop": lambda params: torch.optim.RMSprop(params, lr=0.01, momentum=0.9, centered=True),
    "Rprop": lambda params: torch.optim.Rprop(params, lr=0.01),
    "ASGD": lambda params: torch.optim.ASGD(params, lr=0.01),
    "Adafactor": lambda params: torch.optim.Adafactor(params, lr=0.01),
}


def train_steps(model: nn.Module, optimizers: list[torch.optim.Optimizer], steps: int = 2) -> None:
    for step in range(steps):
        x, y = batch(seed=step)
        for optimizer in optimizers:
            optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for optimizer in optimizers:
            optimizer.step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_goes_on_after_a_prune_with_the_state_of_the_kept_channels(name):
    _, model, pruner = converted()
    optimizer = OPTIMIZERS[name](model.parameters())
    train_steps(model, [optimizer])
    weight = model[0].weight
    old_shape = weight.shape
    state = {key: value.clone() for key, value in optimizer.state[weight].items() if isinstance(value, torch.Tensor)}
    removals = pruner.prune(4, optimizer)
    going = next(removal.indices for removal in removals if removal.layers[0] == "0")
    kept = [index for index in range(old_shape[0]) if index not in going]
    for key, value in state.items():
        if value.dim() == len(old_shape) and value.shape[0] == old_shape[0]:
            torch.testing.assert_close(optimizer.state[weight][key], value[kept], msg=key)
        else:
            torch.testing.assert_close(optimizer.state[weight][key], value, msg=key)
    train_steps(model, [optimizer])


def test_lbfgs_is_reset_with_a_warning_and_goes_on():
    _, model, pruner = converted()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    x, y = batch()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    with pytest.warns(UserWarning, match="LBFGS keeps a flat history"):
        pruner.prune(3, optimizer)
    assert not optimizer.state
    optimizer.step(closure)


def test_several_optimizers_are_all_sliced():
    _, model, pruner = converted()
    params = list(model.parameters())
    first, second = torch.optim.SGD(params[:4], lr=0.01, momentum=0.9), torch.optim.Adam(params[4:], lr=0.01)
    shadow = torch.optim.Adam(params, lr=0.0)  # a second optimizer over the same parameters
    train_steps(model, [first, second, shadow])
    pruner.prune(4, [first, second, shadow])
    train_steps(model, [first, second, shadow])


class FlatState(torch.optim.SGD):
    """An optimizer that keeps a flattened copy of each parameter, which no prune can slice."""

    def step(self, closure=None):  # noqa: ANN001, ANN201
        for group in self.param_groups:
            for param in group["params"]:
                self.state[param]["flat"] = param.detach().flatten().clone()
        return super().step(closure)


def test_an_optimizer_state_that_cannot_be_sliced_is_refused_before_anything_changes():
    _, model, pruner = converted()
    optimizer = FlatState(model.parameters(), lr=0.01)
    train_steps(model, [optimizer])
    before = snapshot(model, pruner)
    with pytest.raises(ValueError, match=r"FlatState holds state 'flat' of shape \(216,\) for a parameter of shape \(8, 3, 3, 3\)"):
        pruner.prune(3, optimizer)
    assert_same_snapshot(before, snapshot(model, pruner))


def test_something_else_than_an_optimizer_is_refused():
    _, model, pruner = converted()
    train_steps(model, [])
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer or a sequence of them, got dict"):
        pruner.prune(3, [{"lr": 0.1}])


# -- memory format ------------------------------------------------------------------------------
def test_channels_last_tensors_stay_channels_last():
    _, model, pruner = converted()
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_steps(model, [optimizer])
    pruner.prune(4, optimizer)
    for conv in (model[0], model[3]):
        for tensor in (conv.weight, conv.weight.grad, optimizer.state[conv.weight]["momentum_buffer"]):
            assert tensor.is_contiguous(memory_format=torch.channels_last)
            assert not tensor.is_contiguous()
    train_steps(model, [optimizer])


# -- mixed precision ----------------------------------------------------------------------------
def test_the_estimates_do_not_depend_on_the_loss_scale():
    estimates = []
    for scale in (2.0**4, 2.0**12):
        model, pruner = float_model()
        pruner.grad_scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        scaled_steps(model, pruner.grad_scaler, [(*batch(seed=0), 1.0), (*batch(seed=1), 1.0)])
        estimates.append([model.get_submodule(name).taylor_estimates for name in ESTIMATORS])
    for low, high in zip(*estimates):
        torch.testing.assert_close(low, high)


def test_an_overflowed_batch_is_skipped_counted_and_weights_no_other():
    model, pruner = float_model()
    pruner.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    scales = scaled_steps(model, pruner.grad_scaler, [(*batch(seed=0), 1.0), (*batch(seed=1), float("inf")), (*batch(seed=2), 1.0)])
    clean, clean_pruner = float_model()
    clean_pruner.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    clean_scales = scaled_steps(clean, clean_pruner.grad_scaler, [(*batch(seed=0), 1.0), (*batch(seed=2), 1.0)])
    assert scales == [2.0**8, 2.0**9, 2.0**8] and clean_scales == [2.0**8, 2.0**9]  # the last batch: two scales
    for name in ESTIMATORS:
        layer = model.get_submodule(name)
        assert layer.batches_skipped == 1 and layer.examples_seen == 10, name
        torch.testing.assert_close(layer.taylor_estimates, clean.get_submodule(name).taylor_estimates, msg=name)
    assert f"  {ESTIMATORS[0]}: 1 batch left out since the last prune, gradients not finite" in pruner.report()
    pruner.prune(2)  # the interval is not lost


def test_prune_loop_runs_mixed_precision_through_a_scaler():
    from torch.utils.data import DataLoader, TensorDataset

    from prunable_nn import FlopsTarget, prune_loop

    model, pruner = float_model()
    x, y = batch(size=16)
    loader = DataLoader(TensorDataset(x.float(), y), batch_size=8)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    history = prune_loop(
        model, pruner, loader, loader, torch.optim.SGD(model.parameters(), lr=0.05), target=FlopsTarget(0.05), max_to_prune=2,
        steps_per_round=2, max_rounds=2, autocast=torch.bfloat16, grad_scaler=scaler, progress=False,
    )
    assert pruner.grad_scaler is scaler and model[1].grad_scaler is scaler
    assert len(history) == 3 and history[-1].flops < history[0].flops


def test_a_layer_whose_forward_saves_its_own_output_backwards_through_the_recording():
    """timm's ``BatchNormAct2d`` ends with a ReLU, which saves its output for the backward:
    the recording must leave that output valid for it."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=nn.ReLU), nn.Conv2d(8, 4, 3),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).to(DOUBLE)
    x, y = batch()
    pruner = TaylorPruner(model, x)
    F.cross_entropy(model(x), y[:5] % 3).backward()
    assert model[1].examples_seen == 5
    pruner.prune(2)


# -- memory -------------------------------------------------------------------------------------
def test_a_batch_norm_read_by_a_relu_keeps_no_output_alive():
    """Autograd keeps the ReLU's output, not the batch norm's: recording after the ReLU lets
    the batch norm's output go as soon as the forward is done."""
    from torch.multiprocessing.reductions import StorageWeakRef

    _, model, pruner = converted()
    assert model[1].records_after_activation and model[4].records_after_activation
    outputs = []
    model[1].register_forward_hook(lambda _m, _a, out: outputs.append(StorageWeakRef(out.untyped_storage())))
    x, y = batch()
    loss = F.cross_entropy(model(x), y)
    assert outputs[0].expired()
    loss.backward()
    assert model[1].examples_seen == 5


def test_a_layer_whose_output_never_reaches_its_relu_records_its_own_from_then_on():
    reference, model, _ = converted()
    model[1].register_forward_hook(lambda _m, _a, out: out * 1.0)  # a new tensor: the ReLU reads that
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    assert model[1].examples_seen == 0  # this forward's statistic reached no one
    out, _, outputs, acts = reference_run(reference, x)
    expected = expected_estimates(outputs, torch.autograd.grad(F.cross_entropy(out, y), acts))
    F.cross_entropy(model(x), y).backward()
    assert not model[1].records_after_activation
    assert model[1].examples_seen == 5
    torch.testing.assert_close(model[1].taylor_estimates, expected["1"])


def test_a_graph_made_with_create_graph_and_dropped_leaves_plain_numbers():
    """The estimate of a forward is finished when its graph goes, here in Python code with
    gradients enabled: what the backward recorded must carry no graph of its own."""
    _, model, _ = converted()
    x = batch()[0].requires_grad_()
    out = model(x)
    input_grad = torch.autograd.grad(out.sum(), x, create_graph=True)
    del out, input_grad
    layer = model.get_submodule(ESTIMATORS[0])
    assert layer.examples_seen == 5
    assert not layer.estimate_totals.sums.requires_grad
