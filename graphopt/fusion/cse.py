"""Common-subexpression elimination: identical nodes computing identical values.

Two deterministic nodes with the same domain, op type, attributes and inputs produce the
same outputs, so the later one is removed and its readers read the earlier one's outputs.
Inputs count as the same when they are the same tensor, or small initializers with equal
dtype, shape and bytes (exporters duplicate constants such as shapes and scalars).
The graph is in topological order, so the earlier node is computed before every reader
of the later one. Nodes with subgraphs and random ops are never merged.
"""

from __future__ import annotations

import hashlib

import onnx

from graphopt.fusion.graph import FusionGraph
from graphopt.fusion.rule import Match, Rule

RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
SMALL_CONSTANT = 4096  # bytes; larger initializers are compared by name only


def _input_key(g: FusionGraph, name: str, inits: dict) -> str:
    tensor = inits.get(name)
    if tensor is None or (name in g.inputs and g.ir_version >= 4) or tensor.ByteSize() > SMALL_CONSTANT:
        return name
    memo = g.memo.setdefault("cse_const", {})
    if name not in memo:  # initializers are never edited in place nor removed while a FusionGraph lives
        memo[name] = _content_key(tensor)
    return memo[name]


def _content_key(tensor) -> str:
    clone = onnx.TensorProto()
    clone.CopyFrom(tensor)
    clone.name = ""
    return "const:" + hashlib.sha1(clone.SerializeToString(deterministic=True)).hexdigest()


def node_key(g: FusionGraph, node, inits: dict) -> str | None:
    if node.op_type in RANDOM_OPS or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                         for a in node.attribute):
        return None
    attrs = sorted(a.SerializeToString(deterministic=True) for a in node.attribute)
    inputs = [_input_key(g, name, inits) if name else "" for name in node.input]
    return repr((node.domain, node.op_type, inputs, attrs, [bool(o) for o in node.output]))


def _first_by_key(g: FusionGraph) -> dict:
    if "cse" not in g.cache:
        inits = {t.name: t for t in g.graph.initializer}
        first: dict[str, onnx.NodeProto] = {}
        for node in g.graph.node:
            key = node_key(g, node, inits)
            if key is not None:
                first.setdefault(key, node)
        g.cache["cse"] = (first, inits)
    return g.cache["cse"]


def match_cse(g: FusionGraph, node) -> Match | None:
    first, inits = _first_by_key(g)
    key = node_key(g, node, inits)
    if key is None or first.get(key) is None or first[key] is node:
        return None
    return Match([node, first[key]])


def check_cse(g: FusionGraph, m: Match) -> str | None:
    dup, _ = m.nodes
    if any(o in g.outputs for o in dup.output):
        return f"duplicate {dup.op_type} {dup.name!r} kept: it writes a graph output"
    return None


def rewrite_cse(g: FusionGraph, m: Match) -> None:
    from graphopt.ir.rewrite import rename_input_uses

    dup, kept = m.nodes
    g.remove(dup)
    for old, new in zip(dup.output, kept.output):
        if old:
            rename_input_uses(g.graph, old, new)


def merge_all(g: FusionGraph, accept) -> int:
    """Every duplicate in one topological scan; renames apply as the scan goes, so chains of
    duplicates (x -> a, a' -> b, b') collapse in the same scan. Returns the number merged."""
    inits = {t.name: t for t in g.graph.initializer}
    first: dict[str, onnx.NodeProto] = {}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in g.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        key = node_key(g, node, inits)
        if key is None:
            continue
        kept = first.setdefault(key, node)
        if kept is node or not accept(Match([node, kept])):
            continue
        dropped.add(id(node))
        rename.update((old, new) for old, new in zip(node.output, kept.output) if old)
    if not dropped:
        return 0
    kept_nodes = [n for n in g.graph.node if id(n) not in dropped]
    del g.graph.node[:]
    g.graph.node.extend(kept_nodes)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in kept_nodes for a in n.attribute):
        from graphopt.ir.rewrite import rename_input_uses

        for old, new in rename.items():  # reads inside subgraph bodies
            rename_input_uses(g.graph, old, new)
    return len(dropped)


RULES = [Rule("cse_merged", ("*",), match_cse, check_cse, rewrite_cse, "identical nodes merged", batch=merge_all)]
