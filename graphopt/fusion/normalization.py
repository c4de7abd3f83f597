"""LayerNormalization (opset 17) and Softmax from their decompositions.

    d = x - ReduceMean(x, axes=[-1])
    y = d / Sqrt(ReduceMean(d ** 2, axes=[-1]) + eps)       (d * d also accepted)
    out = y * gamma + beta                                  (Mul/Add optional, constant)
      == LayerNormalization(x, gamma, beta, axis=-1, epsilon=eps)

Preconditions: both ReduceMeans reduce only the last axis with keepdims=1 (axes as an
attribute before opset 18, as an input from 18), Pow's exponent is exactly 2, eps is a
constant scalar, gamma/beta are constants that broadcast along the last axis only (so
the output shape does not grow), every intermediate is read only inside the pattern, and
x is float. Without a Mul, gamma is ones of the last dimension, which must be static.

    e = Exp(x - ReduceMax(x, axes=[a]))      (or e = Exp(x))
    out = e / ReduceSum(e, axes=[a])        == Softmax(x, axis=a)

Preconditions: one reduced axis with keepdims=1, the same in both reductions; from opset 13
any axis (Softmax is per axis), before it only the last one (older Softmax flattens from
`axis`); x float; e read only by the ReduceSum and the Div. Softmax subtracts the max
itself, so the unshifted form gets the same values where it did not overflow.
"""

from __future__ import annotations

import numpy as np

from graphopt.fusion.graph import FusionGraph, attr, scalar
from graphopt.fusion.rule import Match, Rule


def _single_axis(g: FusionGraph, node, x: str) -> int | None:
    """The one axis (as written) that reduction `node` of x reduces with keepdims=1, or None."""
    if node is None or node.input[0] != x or attr(node, "keepdims", 1) != 1:
        return None
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = g.value(node.input[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return axes[0] if axes is not None and len(axes) == 1 else None


def _last_axis_mean(g: FusionGraph, node, x: str) -> bool:
    axis = _single_axis(g, node, x) if node is not None and node.op_type == "ReduceMean" else None
    rank = g.rank(x)
    return axis is not None and (axis == -1 or (rank is not None and axis == rank - 1))


def _squared(g: FusionGraph, name: str, d: str):
    node = g.producer(name)
    if node is None:
        return None
    if node.op_type == "Pow" and node.input[0] == d and scalar(g.value(node.input[1])) == 2.0:
        return node
    if node.op_type == "Mul" and node.input[0] == d and node.input[1] == d:
        return node
    return None


def match_layernorm(g: FusionGraph, div) -> Match | None:
    sub = g.producer(div.input[0], "Sub")
    sqrt = g.producer(div.input[1], "Sqrt")
    if sub is None or sqrt is None:
        return None
    x = sub.input[0]
    mean = g.producer(sub.input[1])
    add_eps = g.producer(sqrt.input[0], "Add")
    if not _last_axis_mean(g, mean, x) or add_eps is None:
        return None
    var = g.producer(add_eps.input[0])
    eps = scalar(g.value(add_eps.input[1])) if g.is_const(add_eps.input[1]) else None
    d = sub.output[0]
    if var is None or eps is None or not _last_axis_mean(g, var, var.input[0]):
        return None
    sq = _squared(g, var.input[0], d)
    if sq is None:
        return None
    nodes = [div, sub, mean, sqrt, add_eps, var, sq]
    return _with_affine(g, Match(nodes, {"x": x, "eps": eps, "out": div}))


def _with_affine(g: FusionGraph, m: Match) -> Match:
    """Extend the match with a following Mul(gamma) and Add(beta) when present."""
    for op, key in (("Mul", "gamma"), ("Add", "beta")):
        user = g.only_user(m["out"].output[0])
        if user is None or user.op_type != op or len(user.input) != 2:
            break
        other = user.input[1] if user.input[0] == m["out"].output[0] else user.input[0]
        if not g.is_const(other):
            break
        m.data[key] = other
        m.data["out"] = user
        m.nodes.insert(0, user)
    return m


def check_layernorm(g: FusionGraph, m: Match) -> str | None:
    where = f"LayerNorm form at {m['out'].name!r} not fused"
    if not g.opset_allows(17):
        return f"{where}: opset {g.opset} < 17 (upgrade_opset=true allows it)"
    inside = {id(n) for n in m.nodes}
    for node in m.nodes:
        if node is m["out"]:
            continue
        if node.output[0] in g.outputs or any(id(u) not in inside for u in g.users(node.output[0])):
            return f"{where}: {node.op_type} {node.name!r} has readers outside the pattern"
    if g.dtype(m["x"]) not in (1, 10, 11, 16):
        return f"{where}: input is not float"
    shape = g.shape(m["x"])
    dim = shape[-1] if shape else None
    for key in ("gamma", "beta"):
        if key in m.data:
            value = g.value(m[key])
            if value.ndim > (len(shape) if shape else 1) or any(d != 1 for d in value.shape[:-1]):
                return f"{where}: {key} {value.shape} is not along the last axis only"
            if dim is None and value.size == 1:
                return f"{where}: {key} is a scalar and the last dimension is unknown"
            if dim is not None and value.shape[-1] not in (1, dim):
                return f"{where}: {key} does not match the last dimension"
    if dim is None and "gamma" not in m.data:
        return f"{where}: no scale and the last dimension is unknown"
    if not g.supports("LayerNormalization"):
        return f"{where}: target lacks LayerNormalization"
    m.data["dim"] = dim
    return None


def _param(g: FusionGraph, m: Match, key: str, fill: float, dtype) -> np.ndarray:
    dim = m["dim"]
    if key not in m.data:
        return np.full((dim,), fill, dtype)
    value = g.value(m[key]).reshape(-1).astype(dtype)
    return np.broadcast_to(value, (dim,)).copy() if dim is not None else value


def rewrite_layernorm(g: FusionGraph, m: Match) -> None:
    g.needed_opset = max(g.needed_opset, 17)
    out = m["out"]
    dtype = g.value(m["gamma"]).dtype if "gamma" in m.data else np.float32
    base = out.name or out.output[0]
    scale = g.add_constant(_param(g, m, "gamma", 1.0, dtype), f"{base}_scale", before=out)
    bias = g.add_constant(_param(g, m, "beta", 0.0, dtype), f"{base}_bias", before=out)
    node = g.make_node("LayerNormalization", [m["x"], scale, bias], [out.output[0]], "layernorm_fused", base,
                       axis=-1, epsilon=float(m["eps"]))
    g.insert_before(node, out)
    g.remove(*m.nodes)


def _reduced_axis(g: FusionGraph, node, x: str) -> int | None:
    """The single axis `node` reduces with keepdims=1 (normalised to >= 0), or None."""
    axis, rank = _single_axis(g, node, x), g.rank(x)
    if axis is None or rank is None or not -rank <= axis < rank:
        return None
    return axis % rank


def match_softmax(g: FusionGraph, div) -> Match | None:
    exp = g.producer(div.input[0], "Exp")
    total = g.producer(div.input[1], "ReduceSum")
    if exp is None or total is None:
        return None
    axis = _reduced_axis(g, total, exp.output[0])
    if axis is None:
        return None
    nodes, x = [div, total, exp], exp.input[0]
    sub = g.producer(x, "Sub")
    if sub is not None and _reduced_axis(g, g.producer(sub.input[1], "ReduceMax"), sub.input[0]) == axis:
        nodes, x = nodes + [sub, g.producer(sub.input[1])], sub.input[0]
    return Match(nodes, {"x": x, "axis": axis})


def check_softmax(g: FusionGraph, m: Match) -> str | None:
    where = f"Softmax form at {m.anchor.name!r} not fused"
    inside = {id(n) for n in m.nodes}
    for node in m.nodes[1:]:
        if node.output[0] in g.outputs or any(id(u) not in inside for u in g.users(node.output[0])):
            return f"{where}: {node.op_type} {node.name!r} has readers outside the pattern"
    if g.dtype(m["x"]) not in (1, 10, 11, 16):
        return f"{where}: input is not float"
    if g.opset < 13 and m["axis"] != g.rank(m["x"]) - 1:
        return f"{where}: opset {g.opset} Softmax flattens from its axis; only the last axis is equivalent"
    return None


def rewrite_softmax(g: FusionGraph, m: Match) -> None:
    div = m.anchor
    node = g.make_node("Softmax", [m["x"]], [div.output[0]], "softmax_fused", div.name or div.output[0],
                       axis=int(m["axis"]))
    g.insert_before(node, div)
    g.remove(*m.nodes)


RULES = [Rule("softmax_fused", ("Div",), match_softmax, check_softmax, rewrite_softmax,
              "Exp(x - ReduceMax) / ReduceSum(Exp) to Softmax"),
         Rule("layernorm_fused", ("Div",), match_layernorm, check_layernorm, rewrite_layernorm,
              "ReduceMean/Sub/Pow/Sqrt/Div (+ Mul, Add) to LayerNormalization (opset 17)")]
