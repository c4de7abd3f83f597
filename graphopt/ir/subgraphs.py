"""Walking the graphs nested in If / Loop / Scan attributes."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` then every subgraph below it, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    return any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for attr in node.attribute
    )


def outer_scope_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph of `graph` reads from the enclosing scope (they must be kept)."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names |= _free_names(sub)
    return names


def _free_names(graph: onnx.GraphProto) -> set[str]:
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        used |= _free_names_of_node(node)
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return used - defined


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names the subgraphs of `node` (If/Loop/Scan bodies) read from the enclosing scope."""
    return _free_names_of_node(node)


def _free_names_of_node(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            names |= _free_names(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for sub in attr.graphs:
                names |= _free_names(sub)
    return names
