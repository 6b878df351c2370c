"""Which values of a model's graph an operation writes into in place, and how: what decides
where a layer's estimate is read when the model writes into its output (DESIGN.md rule 2).

- An addition (``out += identity``, ``out.sub_(x)``) leaves the sum, the stream the readers
  see, and ``dL/da`` is ``dL/d(sum)``: the estimate reads the sum (:attr:`InPlaceWrite.ADDITION`).
- A product, a quotient or a squashing activation (``out *= gate``, ``out.mul_(gain)``,
  ``out.sigmoid_()``, ``F.silu(out, inplace=True)``) leaves a value that carries the factor,
  which ``dL/da`` carries too: the layer records a copy of its output
  (:attr:`InPlaceWrite.OVERWRITE`).
- A clamp (``relu_``, ``clamp_``, ``nn.ReLU(inplace=True)``) changes ``a`` only where
  ``dL/da`` is zero, which leaves ``a * dL/da`` as it was: it is no write here.

An operation on an in-place result writes into the value that result came from
(``out.relu_().mul_(gain)`` overwrites ``out``); one on a view of a value is not followed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from torch import fx, nn

from .ops import (
    INPLACE_ADDING_FUNCTIONS,
    INPLACE_ADDING_METHODS,
    INPLACE_FUNCTIONS,
    INPLACE_METHODS,
    INPLACE_SAFE_FUNCTIONS,
    OVERWRITING_FUNCTIONS,
    OVERWRITING_METHODS,
)


class InPlaceWrite(enum.Enum):
    """How the model writes into a layer's output in place (see the module docstring)."""

    ADDITION = "addition"
    OVERWRITE = "overwrite"


def strongest(writes: Iterable[InPlaceWrite]) -> InPlaceWrite:
    """An overwrite outweighs an addition: a copy read before both is right for both."""
    return InPlaceWrite.OVERWRITE if InPlaceWrite.OVERWRITE in set(writes) else InPlaceWrite.ADDITION


def in_place_writes(graph: fx.Graph, modules: dict[str, nn.Module], out_of_place: list[nn.Module]) -> dict[fx.Node, InPlaceWrite]:
    """Every value of ``graph`` that an operation writes into in place, with the strongest
    write it gets (an overwrite over an addition). ``out_of_place`` lists the in-place
    activation modules that will be made out of place."""
    writes: dict[fx.Node, InPlaceWrite] = {}
    for node in graph.nodes:
        write = _write(node)
        value = node.args[0] if write is not None and node.args else None
        while isinstance(value, fx.Node) and writes.get(value) not in (write, InPlaceWrite.OVERWRITE):
            writes[value] = write
            value = value.args[0] if value.args and _returns_its_operand(value, modules, out_of_place) else None
    return writes


def _write(node: fx.Node) -> InPlaceWrite | None:
    if node.op == "call_function":
        if node.target in OVERWRITING_FUNCTIONS:
            return InPlaceWrite.OVERWRITE
        if node.kwargs.get("inplace", False) and node.target not in INPLACE_SAFE_FUNCTIONS:
            return InPlaceWrite.OVERWRITE
        return InPlaceWrite.ADDITION if node.target in INPLACE_ADDING_FUNCTIONS else None
    if node.op == "call_method":
        if node.target in OVERWRITING_METHODS:
            return InPlaceWrite.OVERWRITE
        return InPlaceWrite.ADDITION if node.target in INPLACE_ADDING_METHODS else None
    return None


def _returns_its_operand(node: fx.Node, modules: dict[str, nn.Module], out_of_place: list[nn.Module]) -> bool:
    """Whether ``node`` changes its first operand in place and returns it."""
    if node.op == "call_function":
        return node.target in INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))
    if node.op == "call_method":
        return node.target in INPLACE_METHODS
    if node.op == "call_module":
        module = modules[node.target]
        return getattr(module, "inplace", False) is True and module not in out_of_place
    return False
