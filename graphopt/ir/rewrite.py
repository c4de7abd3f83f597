"""Small in-place rewriting helpers on onnx.GraphProto shared by the passes."""

from __future__ import annotations

import heapq
from collections import defaultdict

import onnx

from graphopt.ir.subgraphs import subgraph_reads


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> nodes reading it (a node that reads it in a subgraph counts)."""
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        names = set(node.input) | subgraph_reads(node)
        for name in names:
            if name:
                users[name].append(node)
    return users


def rename_input_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every reader of `old` (subgraphs included) read `new` instead."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                if not _defines(sub, old):
                    rename_input_uses(sub, old, new)
                    for out in sub.output:
                        if out.name == old:
                            out.name = new


def _defines(graph: onnx.GraphProto, name: str) -> bool:
    return (any(i.name == name for i in graph.input)
            or any(t.name == name for t in graph.initializer)
            or any(name in n.output for n in graph.node))


def graph_output_names(graph: onnx.GraphProto) -> set[str]:
    return {o.name for o in graph.output}


def remove_dead_nodes(graph: onnx.GraphProto) -> int:
    """Drop nodes (and initializers) that no graph output depends on; returns nodes removed."""
    live = graph_output_names(graph)
    keep = []
    for node in reversed(topological_order(graph) or list(graph.node)):
        if any(o in live for o in node.output if o):
            keep.append(node)
            live.update(n for n in node.input if n)
            live |= subgraph_reads(node)
    removed = len(graph.node) - len(keep)
    if removed:
        keep.reverse()
        del graph.node[:]
        graph.node.extend(keep)
    inputs = {i.name for i in graph.input}
    dead_inits = [t for t in graph.initializer if t.name not in live and t.name not in inputs]
    for tensor in dead_inits:
        graph.initializer.remove(tensor)
    valued = live | inputs | {t.name for t in graph.initializer}
    valued |= {o for n in graph.node for o in n.output}
    stale = [v for v in graph.value_info if v.name not in valued]
    for value in stale:
        graph.value_info.remove(value)
    return removed


def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto] | None:
    """Nodes in a valid execution order (stable: original order where free), or None on a cycle."""
    made = {out: idx for idx, node in enumerate(graph.node) for out in node.output if out}
    indegree, users = {}, defaultdict(list)
    for idx, node in enumerate(graph.node):
        deps = {made[n] for n in set(node.input) | subgraph_reads(node) if n in made}
        indegree[idx] = len(deps)
        for dep in deps:
            users[dep].append(idx)
    ready = [i for i, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        idx = heapq.heappop(ready)
        order.append(graph.node[idx])
        for user in users[idx]:
            indegree[user] -= 1
            if indegree[user] == 0:
                heapq.heappush(ready, user)
    return order if len(order) == len(graph.node) else None
