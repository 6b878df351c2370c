"""Which layers estimate the importance of a model's channels, and where each records: the
last step of the walk (:mod:`prunable_nn.graph`).

The estimators are the prunable layers whose outputs the readers see: walking back from
each reader's input through the operations that carry labels, the first prunable layer met.
A reader whose output is dead still runs and follows the channels it reads, but it sends no
gradient back. An estimator called once whose output only a ReLU module reads records
after that ReLU (:class:`~prunable_nn.recording.RecordAfter`: no memory), unless the model
writes into the ReLU's output in place; how the model writes into an estimator's own output
is noted (:mod:`prunable_nn.writes`).
"""

from __future__ import annotations

from torch import fx, nn

from .flow import ChannelFlow
from .layers import PrunableLayer
from .recording import HOMOGENEOUS_ACTIVATIONS
from .writes import in_place_writes, strongest


def find_estimators(
    graph: fx.Graph,
    modules: dict[str, nn.Module],
    flow: ChannelFlow,
    readers: list[fx.Node],
    sources: dict[fx.Node, list[fx.Node]],
) -> None:
    """Fill ``flow.estimators`` (in call order), ``flow.records_after`` and
    ``flow.in_place_writes``, given the ``readers``' call nodes and, for every node that
    carries labels, the ``sources`` it carries them from."""
    found: dict[PrunableLayer, None] = {}
    live = live_nodes(graph)
    for reader in readers:
        if reader not in live:
            continue
        pending, seen = [reader.args[0]], set()
        while pending:
            node = pending.pop()
            if node in seen:
                continue
            seen.add(node)
            module = modules.get(node.target) if node.op == "call_module" else None
            if isinstance(module, PrunableLayer):
                if (module, "output") in flow.members:
                    found[module] = None
            else:
                pending += sources.get(node, [])
    calls: dict[nn.Module, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(modules[node.target], []).append(node)
    order = {module: position for position, module in enumerate(calls)}
    flow.estimators = sorted(found, key=order.__getitem__)
    writes = in_place_writes(graph, modules, flow.out_of_place)
    for layer in flow.estimators:
        written = {writes[node] for node in calls[layer] if node in writes}
        if written:  # one call's output overwritten, another's added into
            flow.in_place_writes[layer] = strongest(written)
        (node, *others), users = calls[layer], list(calls[layer][0].users)
        if others or len(users) != 1 or users[0].op != "call_module" or users[0].args[:1] != (node,):
            continue
        if users[0] in writes:  # changed after the activation: not the output autograd keeps
            continue
        activation = modules[users[0].target]
        if type(activation) in HOMOGENEOUS_ACTIVATIONS:
            flow.records_after[layer] = activation


def live_nodes(graph: fx.Graph) -> set[fx.Node]:
    """The nodes that the outputs depend on: the others get no gradient."""
    pending = [node for node in graph.nodes if node.op == "output"]
    live: set[fx.Node] = set()
    while pending:
        node = pending.pop()
        if node not in live:
            live.add(node)
            pending += node.all_input_nodes
    return live
