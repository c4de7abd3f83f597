"""Layout chains: Transpose merge/cancel, Reshape-family chains, Cast chains.

    Transpose(Transpose(x, p1), p2) = Transpose(x, q),  q[j] = p1[p2[j]]  (identity q: x)

A Reshape with a constant target shape free of 0 entries ignores its input's shape, so
any chain of Reshape / Flatten / Squeeze / Unsqueeze feeding it can be skipped:
Reshape(f(x), s) = Reshape(x, s). When the chain's final shape is fully static, the whole
chain is one Reshape to that shape.

    Cast(Cast(x, T1), T2) = Cast(x, T2)   when T1 represents every value of x's type
                                          (e.g. float16 -> float32 -> T2, int8 -> int32 -> T2)

Reshape targets built as Concat(Unsqueeze(Gather(Shape(x), i)), ...) become constants:
a static dim is its value, and a dim equal (same symbolic name from shape inference) to the
Reshape input's dim at the same position becomes 0, which Reshape (allowzero=0) copies.
Gather(Shape(x), i) of a static dim is that constant.

The inner node is not removed, only bypassed: dead-code elimination drops it if nothing
else reads it, so no rewrite ever adds a node.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.fusion.graph import FusionGraph, attr, set_attr
from graphopt.fusion.rule import Match, Rule

T = onnx.TensorProto
SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
# type -> types that hold every value of it exactly
WIDER = {
    T.BOOL: {T.INT8, T.UINT8, T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT16, T.FLOAT, T.DOUBLE},
    T.INT8: {T.INT16, T.INT32, T.INT64, T.FLOAT16, T.FLOAT, T.DOUBLE},
    T.UINT8: {T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT16, T.FLOAT, T.DOUBLE},
    T.INT16: {T.INT32, T.INT64, T.FLOAT, T.DOUBLE},
    T.UINT16: {T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT, T.DOUBLE},
    T.INT32: {T.INT64, T.DOUBLE},
    T.UINT32: {T.INT64, T.UINT64, T.DOUBLE},
    T.FLOAT16: {T.FLOAT, T.DOUBLE},
    T.BFLOAT16: {T.FLOAT, T.DOUBLE},
    T.FLOAT: {T.DOUBLE},
}


def _perm(g: FusionGraph, node) -> list[int] | None:
    perm = attr(node, "perm")
    if perm is not None:
        return list(perm)
    rank = g.rank(node.input[0])
    return None if rank is None else list(reversed(range(rank)))


def match_pair(op_type: str):
    """Matcher for `op_type` fed directly by another `op_type` (outer, inner): chains to merge."""

    def match(g: FusionGraph, outer) -> Match | None:
        inner = g.producer(outer.input[0], op_type)
        return None if inner is None else Match([outer, inner])

    return match


def check_transposes(g: FusionGraph, m: Match) -> str | None:
    outer, inner = m.nodes
    p1, p2 = _perm(g, inner), _perm(g, outer)
    if p1 is None or p2 is None or len(p1) != len(p2):
        return f"Transposes {inner.name!r}, {outer.name!r} not merged: rank unknown"
    combined = [p1[j] for j in p2]
    if combined == list(range(len(combined))):
        reason = g.bypass_reason(outer, inner.input[0])
        if reason:
            return f"Transposes {inner.name!r}, {outer.name!r} not cancelled: {reason}"
    m.data["perm"] = combined
    return None


def rewrite_transposes(g: FusionGraph, m: Match) -> None:
    outer, inner = m.nodes
    if m["perm"] == list(range(len(m["perm"]))):
        g.bypass(outer, inner.input[0])
        return
    outer.input[0] = inner.input[0]
    set_attr(outer, "perm", m["perm"])


def match_constant_transpose(g: FusionGraph, node) -> Match | None:
    """Transpose of a constant weight: cleanup folds these, except IR<4 weights that are also
    graph inputs (constants by that IR's convention, which only fuse honours)."""
    return Match([node]) if node.input and g.is_const(node.input[0]) else None


def check_constant_transpose(g: FusionGraph, m: Match) -> str | None:
    node = m.anchor
    if len(g.users(node.input[0])) != 1 or node.input[0] in g.outputs:
        return f"Transpose {node.name!r} of a constant not folded: the constant has other readers"
    if node.output[0] in g.outputs:
        return f"Transpose {node.name!r} of a constant not folded: it writes a graph output"
    perm = _perm(g, node)
    if perm is None:
        return f"Transpose {node.name!r} of a constant not folded: rank unknown"
    m.data["perm"] = perm
    return None


def rewrite_constant_transpose(g: FusionGraph, m: Match) -> None:
    node = m.anchor
    value = np.ascontiguousarray(np.transpose(g.value(node.input[0]), m["perm"]))
    g.bypass(node, g.add_constant(value, node.output[0] + "_folded", before=node))


def match_reshapes(g: FusionGraph, outer) -> Match | None:
    inner = g.producer(outer.input[0])
    if inner is None or inner.op_type not in SHAPE_OPS:
        return None
    return Match([outer, inner])


def check_reshapes(g: FusionGraph, m: Match) -> str | None:
    outer, inner = m.nodes
    if outer.op_type == "Reshape":
        target = g.value(outer.input[1])
        if target is not None and not np.any(target == 0):
            m.data["shape"] = None  # keep outer's own shape input
            return None
    shape = g.shape(outer.output[0])
    if shape is None or any(d is None for d in shape):
        return f"shape chain {inner.name!r} -> {outer.name!r} kept: final shape not static"
    m.data["shape"] = np.array(shape, np.int64)
    return None


def rewrite_reshapes(g: FusionGraph, m: Match) -> None:
    outer, inner = m.nodes
    if m["shape"] is None:
        outer.input[0] = inner.input[0]
        return
    shape_name = g.add_constant(m["shape"], f"{outer.name or outer.output[0]}_shape", before=outer)
    reshape = g.make_node("Reshape", [inner.input[0], shape_name], [outer.output[0]], "reshape_chain_collapsed",
                          outer.name or outer.output[0])
    g.insert_before(reshape, outer)
    g.remove(outer)


def check_casts(g: FusionGraph, m: Match) -> str | None:
    outer, inner = m.nodes
    src = g.dtype(inner.input[0])
    mid = attr(inner, "to")
    if src is None or mid not in WIDER.get(src, set()) and mid != src:
        return f"Casts {inner.name!r} -> {outer.name!r} kept: the first Cast may round"
    if attr(outer, "to") == src:
        reason = g.bypass_reason(outer, inner.input[0])
        if reason:
            return f"Casts {inner.name!r} -> {outer.name!r} not cancelled: {reason}"
    m.data["src"] = src
    return None


def rewrite_casts(g: FusionGraph, m: Match) -> None:
    outer, inner = m.nodes
    if attr(outer, "to") == m["src"]:
        g.bypass(outer, inner.input[0])
        return
    outer.input[0] = inner.input[0]


# ---------------------------------------------------------------- shape arithmetic
def _shape_source(g: FusionGraph, name: str):
    """(x, dims) when `name` = Shape(x) (with its start/end), else None."""
    shape_node = g.producer(name, "Shape")
    if shape_node is None:
        return None
    dims = g.symbolic_shape(shape_node.input[0])
    if dims is None:
        return None
    start, end = attr(shape_node, "start", 0), attr(shape_node, "end", len(dims))
    return shape_node.input[0], list(dims)[slice(start, end)]


def match_shape_dim(g: FusionGraph, gather) -> Match | None:
    source = _shape_source(g, gather.input[0])
    if source is None or not g.is_const(gather.input[1]) or attr(gather, "axis", 0) != 0:
        return None
    idx = g.value(gather.input[1])
    picked = np.asarray(source[1], dtype=object)[idx.astype(np.int64)] if len(source[1]) else None
    if picked is None or any(not isinstance(d, (int, np.integer)) for d in np.asarray(picked).reshape(-1)):
        return None
    return Match([gather], {"value": np.asarray(picked, dtype=np.int64)})


def check_shape_dim(g: FusionGraph, m: Match) -> str | None:
    if m.anchor.output[0] in g.outputs:
        return f"static dim read by {m.anchor.name!r} kept: it writes a graph output"
    return None


def rewrite_shape_dim(g: FusionGraph, m: Match) -> None:
    gather = m.anchor
    name = g.add_constant(m["value"], f"{gather.name or gather.output[0]}_static")
    g.remove(gather)
    from graphopt.ir.rewrite import rename_input_uses
    rename_input_uses(g.graph, gather.output[0], name)


def _piece_values(g: FusionGraph, name: str) -> list | None:
    """Entries of one Concat piece of a Reshape target: ints, or dim symbols (str) of some Shape."""
    value = g.value(name) if g.is_const(name) else None
    if value is not None:
        return value.reshape(-1).astype(np.int64).tolist()
    node = g.producer(name)
    if node is None:
        return None
    if node.op_type == "Unsqueeze":
        inner = _piece_values(g, node.input[0])
        return inner if inner is not None and len(inner) == 1 else None
    if node.op_type == "Shape":
        return list(_shape_source(g, name)[1]) if _shape_source(g, name) else None
    if node.op_type == "Gather" and g.is_const(node.input[1]) and g.value(node.input[1]).ndim == 0:
        source = _shape_source(g, node.input[0])
        return None if source is None else [source[1][int(g.value(node.input[1]))]]
    if node.op_type == "Slice" and len(node.input) >= 3:
        source = _shape_source(g, node.input[0])
        bounds = [g.value(n) if n else None for n in node.input[1:]]
        if source is None or any(b is None for b, n in zip(bounds, node.input[1:]) if n):
            return None
        steps = bounds[3] if len(bounds) > 3 and bounds[3] is not None else None
        axes = bounds[2] if len(bounds) > 2 and bounds[2] is not None else None
        if (steps is not None and np.any(steps != 1)) or (axes is not None and np.any(axes != 0)):
            return None
        dims = list(source[1])
        return dims[int(bounds[0].reshape(-1)[0]):int(min(bounds[1].reshape(-1)[0], len(dims)))]
    return None


def _target_entries(g: FusionGraph, pieces, data_dims) -> list[int] | None:
    """Constant Reshape target for the Concat of `pieces`, with 0 for dims copied from the input."""
    entries: list[int] = []
    for piece in pieces:
        values = _piece_values(g, piece)
        if values is None:
            return None
        for value in values:
            pos = len(entries)
            if isinstance(value, (int, np.integer)) and value is not None:
                entries.append(int(value))
            elif value is not None and data_dims is not None and pos < len(data_dims) and data_dims[pos] == value:
                entries.append(0)
            else:
                return None
    return entries


def match_reshape_target(g: FusionGraph, reshape) -> Match | None:
    maker = g.producer(reshape.input[1])
    if maker is None or maker.op_type not in ("Concat", "Shape") or attr(reshape, "allowzero", 0):
        return None
    return Match([reshape, maker])


def check_reshape_target(g: FusionGraph, m: Match) -> str | None:
    reshape, concat = m.nodes
    pieces = concat.input if concat.op_type == "Concat" else [reshape.input[1]]
    entries = _target_entries(g, pieces, g.symbolic_shape(reshape.input[0]))
    if entries is None:
        return f"Reshape {reshape.name!r} target kept computed: a dim is not static nor the input's own"
    if entries.count(-1) > 1:
        return f"Reshape {reshape.name!r} target kept computed: two -1 entries"
    m.data["target"] = np.array(entries, np.int64)
    return None


def rewrite_reshape_target(g: FusionGraph, m: Match) -> None:
    reshape, _ = m.nodes
    reshape.input[1] = g.add_constant(m["target"], f"{reshape.name or reshape.output[0]}_target")


def match_dims_concat(g: FusionGraph, concat) -> Match | None:
    if attr(concat, "axis", 0) not in (0, -1) or g.rank(concat.output[0]) not in (None, 1):
        return None
    pieces = [_piece_values(g, p) for p in concat.input]
    if any(p is None for p in pieces) or all(g.is_const(p) for p in concat.input):
        return None
    entries = [v for p in pieces for v in p]
    if all(isinstance(v, (int, np.integer)) for v in entries):
        return Match([concat], {"value": np.array(entries, np.int64), "source": None})
    for name in concat.input:  # the dims of one tensor, in order: that tensor's Shape
        node = g.producer(name)
        while node is not None and node.op_type in ("Unsqueeze", "Gather", "Slice"):
            node = g.producer(node.input[0])
        if node is not None and node.op_type == "Shape" and list(g.symbolic_shape(node.input[0]) or []) == entries:
            return Match([concat], {"value": None, "source": node.input[0]})
    return None


def check_dims_concat(g: FusionGraph, m: Match) -> str | None:
    if m.anchor.output[0] in g.outputs:
        return f"Concat of dims {m.anchor.name!r} kept: it writes a graph output"
    return None


def rewrite_dims_concat(g: FusionGraph, m: Match) -> None:
    concat = m.anchor
    base = concat.name or concat.output[0]
    if m["value"] is not None:
        name = g.add_constant(m["value"], f"{base}_static")
        g.remove(concat)
        from graphopt.ir.rewrite import rename_input_uses
        rename_input_uses(g.graph, concat.output[0], name)
        return
    node = g.make_node("Shape", [m["source"]], [concat.output[0]], "dims_concat_to_shape", base)
    g.insert_before(node, concat)
    g.remove(concat)


# ---------------------------------------------------------------- Unsqueeze chains
def _unsqueeze_axes(g: FusionGraph, node) -> list[int] | None:
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = g.value(node.input[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def check_unsqueezes(g: FusionGraph, m: Match) -> str | None:
    """Outer axes B are final positions; the inner tensor's dim i lands on the i-th position not in B."""
    outer, inner = m.nodes
    a, b, rank = _unsqueeze_axes(g, inner), _unsqueeze_axes(g, outer), g.rank(inner.input[0])
    if a is None or b is None or rank is None:
        return f"Unsqueezes {inner.name!r}, {outer.name!r} not merged: axes or rank unknown"
    mid_rank, final_rank = rank + len(a), rank + len(a) + len(b)
    a = sorted(x % mid_rank for x in a)
    b = sorted(x % final_rank for x in b)
    others = [p for p in range(final_rank) if p not in b]
    m.data["axes"] = sorted(b + [others[i] for i in a])
    return None


def rewrite_unsqueezes(g: FusionGraph, m: Match) -> None:
    outer, inner = m.nodes
    if len(outer.input) > 1:
        outer.input[1] = g.add_constant(np.array(m["axes"], np.int64), f"{outer.name or outer.output[0]}_axes")
    else:
        set_attr(outer, "axes", m["axes"])
    outer.input[0] = inner.input[0]


# ---------------------------------------------------------------- Slice chains
def _slice_parts(g: FusionGraph, node):
    """(starts, ends, axes) of an opset>=10 Slice with constant operands and unit steps, or None."""
    if len(node.input) < 3:
        return None
    values = [g.value(n) if n else None for n in node.input[1:5]]
    if any(v is None for v, n in zip(values, node.input[1:5]) if n):
        return None
    starts, ends = values[0].reshape(-1), values[1].reshape(-1)
    axes = values[2].reshape(-1) if len(values) > 2 and values[2] is not None else np.arange(starts.size)
    steps = values[3] if len(values) > 3 and values[3] is not None else None
    if steps is not None and np.any(steps != 1):
        return None
    return starts.astype(np.int64), ends.astype(np.int64), axes.astype(np.int64)


def check_slices(g: FusionGraph, m: Match) -> str | None:
    """Unit-step slices on disjoint axes commute, so one Slice takes both sets of bounds."""
    outer, inner = m.nodes
    a, b, rank = _slice_parts(g, inner), _slice_parts(g, outer), g.rank(inner.input[0])
    if a is None or b is None or rank is None:
        return f"Slices {inner.name!r}, {outer.name!r} not merged: bounds not constant, steps not 1 or rank unknown"
    axes_a, axes_b = a[2] % rank, b[2] % rank
    if set(axes_a.tolist()) & set(axes_b.tolist()):
        return f"Slices {inner.name!r}, {outer.name!r} not merged: they slice the same axis"
    if not g.private(inner.output[0]):
        return f"Slices {inner.name!r}, {outer.name!r} not merged: the first has other readers"
    m.data["parts"] = [np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), np.concatenate([axes_a, axes_b])]
    return None


def rewrite_slices(g: FusionGraph, m: Match) -> None:
    outer, inner = m.nodes
    base = outer.name or outer.output[0]
    names = [g.add_constant(v, f"{base}_{k}") for v, k in zip(m["parts"], ("starts", "ends", "axes"))]
    del outer.input[:]
    outer.input.extend([inner.input[0]] + names)
    g.remove(inner)


RULES = [
    Rule("slices_merged", ("Slice",), match_pair("Slice"), check_slices, rewrite_slices,
         "Slice of a Slice on other axes merged into one"),
    Rule("unsqueezes_merged", ("Unsqueeze",), match_pair("Unsqueeze"), check_unsqueezes, rewrite_unsqueezes,
         "Unsqueeze of an Unsqueeze merged into one"),
    Rule("dims_concat_simplified", ("Concat",), match_dims_concat, check_dims_concat, rewrite_dims_concat,
         "Concat of static dims to a constant, of all dims of x in order to Shape(x)"),
    Rule("shape_dim_folded", ("Gather",), match_shape_dim, check_shape_dim, rewrite_shape_dim,
         "Gather of a static dim from Shape(x) folded to a constant"),
    Rule("reshape_target_simplified", ("Reshape",), match_reshape_target, check_reshape_target,
         rewrite_reshape_target, "Reshape target computed from Shape(x) replaced by a constant (0 = keep dim)"),
    Rule("transposes_merged", ("Transpose",), match_pair("Transpose"), check_transposes, rewrite_transposes,
         "consecutive Transposes merged, or removed when they cancel"),
    Rule("constant_transpose_folded", ("Transpose",), match_constant_transpose, check_constant_transpose,
         rewrite_constant_transpose, "Transpose of a constant weight read only there folded into it"),
    Rule("reshape_chain_collapsed", SHAPE_OPS, match_reshapes, check_reshapes, rewrite_reshapes,
         "Reshape/Flatten/Squeeze/Unsqueeze chains collapsed to one Reshape"),
    Rule("casts_merged", ("Cast",), match_pair("Cast"), check_casts, rewrite_casts,
         "Cast chains through a lossless intermediate type merged"),
]
