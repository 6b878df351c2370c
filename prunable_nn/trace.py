"""A ``torch.fx`` graph of any model, with the shape of every value.

The model is traced in training mode, the mode in which it gathers estimates and is
fine-tuned, so branches that run only in training (auxiliary classifiers) are in the graph.
Prunable layers stay whole (leaves). A submodule that ``torch.fx`` cannot trace (data-dependent
control flow, unsupported Python) becomes a leaf too: the trace is retried with the innermost
module that failed kept whole, and the reason is recorded. Only when the model's own
``forward`` cannot be traced does :func:`trace` give up.

Shapes come from ``torch.fx``'s ``ShapeProp``: one forward pass of ``example_inputs`` in eval
mode under ``torch.no_grad()`` (batch norm statistics and estimates are left alone), after
which every module's training flag is restored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .flops import ExampleInputs, as_tuple, evaluating
from .layers import PrunableLayer


@dataclass(frozen=True)
class OpaqueModule:
    """A submodule kept whole because ``torch.fx`` could not trace it."""

    name: str
    error: str


class PrunableTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps prunable layers and the modules named in ``opaque`` whole."""

    def __init__(self, opaque: set[str] = frozenset()) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (
            isinstance(module, PrunableLayer)
            or qualified_name in self.opaque
            or super().is_leaf_module(module, qualified_name)
        )


def trace(model: nn.Module, example_inputs: ExampleInputs) -> tuple[fx.GraphModule, list[OpaqueModule]]:
    """The traced model, its nodes' ``meta["tensor_meta"]`` filled in, and the submodules
    kept whole because they could not be traced."""
    opaque: list[OpaqueModule] = []
    modes = {module: module.training for module in model.modules()}
    model.train()
    try:
        while True:
            tracer = PrunableTracer({module.name for module in opaque})
            try:
                graph = tracer.trace(model)
                break
            except Exception as error:  # fx raises many kinds for untraceable code
                failing = _innermost_module(tracer)
                if not failing:
                    raise RuntimeError(
                        f"torch.fx cannot trace {type(model).__name__}.forward itself: "
                        f"{type(error).__name__}: {error}"
                    ) from error
                opaque.append(OpaqueModule(failing, f"{type(error).__name__}: {error}"))
    finally:
        for module, training in modes.items():
            module.training = training
    graph_module = fx.GraphModule(model, graph)
    try:
        with evaluating(graph_module), torch.no_grad():
            ShapeProp(graph_module).propagate(*as_tuple(example_inputs))
    except Exception as error:
        raise RuntimeError(
            f"running {type(model).__name__} on example_inputs failed: {type(error).__name__}: {error}"
        ) from error
    return graph_module, opaque


def _innermost_module(tracer: fx.Tracer) -> str:
    """The qualified name of the innermost module being traced when tracing failed ("" for
    the root): ``Tracer.call_module`` pushes onto ``module_stack`` and pops only on success."""
    names = [name for name, _ in tracer.module_stack.values() if name]
    return names[-1] if names else ""
