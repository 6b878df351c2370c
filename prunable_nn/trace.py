"""A ``torch.fx`` graph of any model, with the shape of every value.

The model is traced in training mode, the mode in which it gathers estimates and is
fine-tuned, so branches that run only in training (auxiliary classifiers) are in the graph.
Prunable layers and every other layer of a known kind (:mod:`prunable_nn.kinds`: a subclass
of a convolution kept whole, a layer norm) stay whole (leaves). A submodule that
``torch.fx`` cannot trace (data-dependent control flow, unsupported Python) becomes a leaf
too: the trace is retried with the innermost module that failed kept whole, and the reason
is recorded. Only when the model's own ``forward`` cannot be traced does :func:`trace` give up.

Shapes come from one pass of ``torch.fx``'s interpreter over the graph under
``torch.no_grad()``, still in training mode, so that a leaf behaves as it did when traced.
It runs on ``meta`` tensors, which have shapes but no data, so it costs no arithmetic and
changes no statistic. A module whose code needs data (a value in an ``if``) makes it run
again on the real ``example_inputs``, in eval mode so that batch norm statistics are left
alone. Every module's training flag is restored. Each node gets ``meta["shape"]``: a
``torch.Size`` for a tensor, a tuple or dict of them for a container, ``None`` otherwise.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import fx, nn

from .compat import innermost_traced_module
from .flops import ExampleInputs, as_tuple
from .kinds import kind_of
from .kinds.base import meta_empty
from .layers import PrunableLayer
from .ops import INPLACE_FUNCTIONS, MODULE_RULES, TYPE_METHODS, Rule, module_rule, operation_rule


@dataclass(frozen=True)
class OpaqueModule:
    """A submodule kept whole because ``torch.fx`` could not trace it."""

    name: str
    error: str


class PrunableTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps layers of known kinds and the modules named in ``opaque``
    whole. A root ``forward`` with ``*args`` or ``**kwargs`` (``forward(self, x, *args,
    **kwargs)`` of Ultralytics' models) is traced as called with ``num_inputs`` positional
    inputs and nothing else, as the example inputs call it."""

    def __init__(self, opaque: set[str] = frozenset(), num_inputs: int = 1) -> None:
        super().__init__()
        self.opaque = opaque
        self.num_inputs = num_inputs

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):  # noqa: ANN001, ANN201 (fx's signature)
        code = inspect.unwrap(root_fn).__code__
        if concrete_args is None and is_module and code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
            root_fn = _fixed_arity(root_fn, self.num_inputs)
        return super().create_args_for_root(root_fn, is_module, concrete_args)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        """A ``chunk(n)`` or a ``split`` into sizes given as a list gives a proxy of its
        parts, whose number the code fixes: ``list(x.chunk(2, 1))`` (YOLO's C2f blocks) and
        ``a, b = x.split([c, c], 1)`` trace."""
        count = None
        rule = operation_rule(node.op, node.target)
        if rule is Rule.CHUNKING:
            count = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
        elif rule is Rule.SPLITTING:
            sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections")
            count = len(sizes) if isinstance(sizes, (list, tuple)) else None
        if isinstance(count, int) and not isinstance(count, bool):
            return PartsProxy(node, self, count)
        return InPlaceProxy(node, self)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (
            kind_of(module) is not None
            or qualified_name in self.opaque
            or type(module) in MODULE_RULES  # a module class declared channel-wise or opaque
            or super().is_leaf_module(module, qualified_name)
        )


class InPlaceProxy(fx.Proxy):
    """A proxy that records ``x += y``, ``-=``, ``*=`` and ``/=`` as the in-place ops they
    are (``torch.fx``'s own records ``x = x + y``): the estimates read what an in-place op
    leaves in a layer's output (:mod:`prunable_nn.graph`)."""

    def __iadd__(self, other: object) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})

    def __isub__(self, other: object) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.isub, (self, other), {})

    def __imul__(self, other: object) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.imul, (self, other), {})

    def __itruediv__(self, other: object) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", operator.itruediv, (self, other), {})


class PartsProxy(fx.Proxy):
    """The proxy of a value made of ``count`` parts: it has a length and can be iterated."""

    def __init__(self, node: fx.Node, tracer: fx.Tracer, count: int) -> None:
        super().__init__(node, tracer)
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[fx.Proxy]:
        return iter([self[index] for index in range(self.count)])


def trace(model: nn.Module, example_inputs: ExampleInputs) -> tuple[fx.Graph, list[OpaqueModule]]:
    """The graph of ``model``, its nodes' ``meta["shape"]`` filled in, and the submodules
    kept whole because they could not be traced."""
    opaque: list[OpaqueModule] = []
    inputs = as_tuple(example_inputs)
    modes = {module: module.training for module in model.modules()}
    try:
        model.train()
        while True:
            tracer = PrunableTracer({module.name for module in opaque}, len(inputs))
            try:
                graph = tracer.trace(model)
                break
            except Exception as error:  # fx raises many kinds for untraceable code
                failing = innermost_traced_module(tracer)
                if not failing:
                    raise RuntimeError(
                        f"torch.fx cannot trace {type(model).__name__}.forward itself: "
                        f"{type(error).__name__}: {error}"
                    ) from error
                opaque.append(OpaqueModule(failing, f"{type(error).__name__}: {error}"))
        with torch.no_grad():
            try:
                ShapeInterpreter(model, graph, on_meta=True).run(*inputs)
            except Exception:  # code that needs data: run on the real inputs
                model.eval()  # batch norm statistics stay as they are
                try:
                    ShapeInterpreter(model, graph, on_meta=False).run(*inputs)
                except Exception as error:
                    raise RuntimeError(
                        f"running {type(model).__name__} on example_inputs failed: "
                        f"{type(error).__name__}: {error}"
                    ) from error
    finally:
        for module, training in modes.items():
            if module.training != training:
                module.training = training
    return graph, opaque


class ShapeInterpreter(fx.Interpreter):
    """Runs the graph and records the shape of every value in ``node.meta["shape"]``; with
    ``on_meta``, on ``meta`` tensors: inputs, parameters, buffers and attributes are replaced
    by empty tensors of the same shapes on the meta device."""

    def __init__(self, model: nn.Module, graph: fx.Graph, on_meta: bool) -> None:
        super().__init__(model, graph=graph)
        self.on_meta = on_meta

    def run(self, *args: object) -> object:
        return super().run(*(self._meta(arg) for arg in args))

    def run_node(self, node: fx.Node) -> object:
        """``Interpreter.run_node`` without the context managers that only tag logs and
        tracebacks with the node (a third of the pass's time on a large graph)."""
        args, kwargs = self.fetch_args_kwargs_from_env(node)
        result = getattr(self, node.op)(node.target, args, kwargs)
        node.meta["shape"] = _shapes(result)
        return result

    def call_module(self, target: str, args: tuple, kwargs: dict) -> object:
        module = self.fetch_attr(target)
        if not self.on_meta:
            return module(*args, **kwargs)
        if module_rule(module) is Rule.ELEMENTWISE:
            return meta_empty(args[0])
        if isinstance(module, PrunableLayer) and len(args) == 1 and not kwargs:
            shortcut = module.kind.meta_forward(module, args[0])
            if shortcut is not None:
                return shortcut
        tensors = {name: self._meta(tensor) for name, tensor in module.named_parameters()}
        tensors.update({name: self._meta(tensor) for name, tensor in module.named_buffers()})
        return torch.func.functional_call(module, tensors, args, kwargs)

    def call_function(self, target: object, args: tuple, kwargs: dict) -> object:
        shortcut = _meta_shortcut("call_function", target, args, kwargs) if self.on_meta else None
        return shortcut if shortcut is not None else super().call_function(target, args, kwargs)

    def call_method(self, target: str, args: tuple, kwargs: dict) -> object:
        shortcut = _meta_shortcut("call_method", target, args, kwargs) if self.on_meta else None
        return shortcut if shortcut is not None else super().call_method(target, args, kwargs)

    def get_attr(self, target: str, args: tuple, kwargs: dict) -> object:
        return self._meta(super().get_attr(target, args, kwargs))

    def _meta(self, value: object) -> object:
        if self.on_meta and isinstance(value, torch.Tensor):
            return torch.empty_like(value, device="meta")
        return value


def _meta_shortcut(op: str, target: object, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The output of a function or method on meta tensors by its rule, or ``None`` to run
    it: torch's meta kernels for element-wise ops, combinations, concatenations and
    reductions run slow Python decompositions. An element-wise op (not a change of type)
    keeps its input's shape, dtype and device, an in-place op returns its operand, a
    combination of two values has the broadcasting rule's shape."""
    rule = operation_rule(op, target)
    if rule is None:
        return None
    in_place = target in INPLACE_FUNCTIONS or (op == "call_method" and target.endswith("_"))
    if in_place and rule in (Rule.ELEMENTWISE, Rule.COMBINING) and isinstance(args[0], torch.Tensor):
        return args[0]
    if rule is Rule.ELEMENTWISE and target not in TYPE_METHODS:
        return meta_empty(args[0])
    if rule is Rule.COMBINING and not kwargs:
        return _combined(*args)
    if rule is Rule.CONCATENATING:
        tensors, dim = args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0)
        shape = list(tensors[0].shape)
        shape[dim] = sum(tensor.shape[dim] for tensor in tensors)
        return meta_empty(tensors[0], shape)
    if rule is Rule.REDUCING and op == "call_method" and len(args) == 2 and set(kwargs) <= {"keepdim"}:
        return _reduced(args[0], args[1], kwargs.get("keepdim", False))
    return None


def _combined(*operands: object) -> torch.Tensor | None:
    """The result of an out-of-place element-wise op of two ``operands`` (meta tensors and
    numbers) by the broadcasting rule, or ``None`` for anything else."""
    tensors = [operand for operand in operands if isinstance(operand, torch.Tensor)]
    if len(operands) != 2 or not tensors or not all(isinstance(operand, (torch.Tensor, int, float)) for operand in operands):
        return None
    shape = torch.broadcast_shapes(*(tensor.shape for tensor in tensors))
    return torch.empty(shape, dtype=torch.result_type(*operands), device="meta")


def _reduced(value: object, dims: object, keepdim: bool) -> torch.Tensor | None:
    """``value.mean(dims, keepdim)`` (or sum, amax, amin) of a meta tensor by its shape, or
    ``None`` when the dims are not ints."""
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(value, torch.Tensor) or not isinstance(dims, (list, tuple)) or not all(isinstance(dim, int) for dim in dims):
        return None
    reduced = {dim % value.dim() for dim in dims}
    shape = [1 if dim in reduced else size for dim, size in enumerate(value.shape) if keepdim or dim not in reduced]
    return meta_empty(value, shape)


def _shapes(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (list, tuple)):
        return tuple(_shapes(item) for item in value)
    if isinstance(value, dict):
        return {key: _shapes(item) for key, item in value.items()}
    return None


def _fixed_arity(forward: Callable[..., object], count: int) -> Callable[..., object]:
    """``forward`` as a function of ``self`` and exactly ``count`` positional inputs, named
    as its own positional parameters are (``input_k`` past them), for fx to make one
    placeholder each."""
    positional = [
        parameter.name
        for parameter in list(inspect.signature(forward).parameters.values())[1:]
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    names = (positional + [f"input_{index}" for index in range(len(positional), count)])[:count]
    arguments = ", ".join(names)
    namespace = {"forward": forward}
    exec(f"def fixed(self, {arguments}):\n    return forward(self, {arguments})\n", namespace)  # noqa: S102
    return namespace["fixed"]
