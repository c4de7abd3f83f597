"""Constant scales and shifts folded into linear ops; MatMul+Add to Gemm; Sum of two to Add.

For a linear op y = W x + b whose output channel o is W_o x + b_o, and a constant c that is
per output channel (its broadcast shape is 1 on every axis but the channel axis):

    y * c = (c W) x + c b          y / c = (W / c) x + b / c
    y + c = W x + (b + c)          y - c = W x + (b - c)

Channel axis of the output: 1 for Conv/ConvTranspose/Gemm, the last for MatMul (whose
constant 2-D weight [K, N] takes scales only: MatMul has no bias). The weight is scaled
along the output axis of graphopt/ir/axes.py (shared with BN folding).

    MatMul(A[M,K], B[K,N]) + C  ==  Gemm(A, B, C)   when A is known 2-D and C broadcasts
                                                   to [M, N] without growing it
    Sum(a, b) == Add(a, b);  (x * a) * b == x * (a * b);  (x + a) + b == x + (a + b)

Rank > 2 MatMuls stay MatMul+Add: Gemm would need reshapes around it.
"""

from __future__ import annotations

import numpy as np

from graphopt.fusion.batchnorm import _fold_after
from graphopt.fusion.graph import FusionGraph, attr, set_attr
from graphopt.fusion.rule import Match, Rule
from graphopt.ir.axes import weight_axes

SCALED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _split_const(g: FusionGraph, node, allow_swap: bool = True):
    """(variable input, constant input) of a binary node, or None."""
    a, b = node.input[0], node.input[1]
    if g.is_const(b):
        return a, b
    if allow_swap and g.is_const(a):
        return b, a
    return None


def channel_vector(c: np.ndarray, out_rank: int | None, axis_from_end: int, channels: int) -> np.ndarray | None:
    """`c` as a per-channel vector when it broadcasts along the channel axis only, else None."""
    if out_rank is None or c.ndim > out_rank:
        return None
    padded = (1,) * (out_rank - c.ndim) + c.shape
    axis = out_rank - axis_from_end
    if any(d != 1 for i, d in enumerate(padded) if i != axis) or padded[axis] not in (1, channels):
        return None
    return np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (channels,)).copy()


def _linear_out(g: FusionGraph, linear) -> tuple[int | None, int, int] | None:
    """(output rank, channel axis counted from the end, channels) of a linear op."""
    w = g.value(linear.input[1])
    if w is None:
        return None
    if linear.op_type == "MatMul":
        if w.ndim != 2:
            return None
        return g.rank(linear.output[0]), 1, w.shape[1]
    if linear.op_type == "Gemm":
        return 2, 1, w.shape[weight_axes("Gemm", {"transB": attr(linear, "transB", 0)}).output]
    channels = w.shape[0] if linear.op_type == "Conv" else w.shape[1] * attr(linear, "group", 1)
    return w.ndim, w.ndim - 1, channels


# ---------------------------------------------------------------- scale / shift folding
def match_affine(g: FusionGraph, node) -> Match | None:
    if len(node.input) != 2:
        return None
    split = _split_const(g, node, allow_swap=node.op_type in ("Mul", "Add"))
    if split is None:
        return None
    var, const = split
    linear = g.producer(var)
    if linear is None or linear.op_type not in SCALED_OPS or len(linear.input) < 2:
        return None
    if node.op_type in ("Add", "Sub") and linear.op_type == "MatMul":
        return None  # MatMul has no bias; matmul_add_to_gemm handles the 2-D case
    return Match([node, linear], {"const": const})


def check_affine(g: FusionGraph, m: Match) -> str | None:
    node, linear = m.nodes
    where = f"{node.op_type} {node.name!r} not folded into {linear.name!r}"
    if not g.private(linear.output[0]):
        return f"{where}: its output has other readers"
    if not g.is_const(linear.input[1]) or not g.is_float(linear.input[1]):
        return f"{where}: weight is not a floating-point constant"
    if len(linear.input) > 2 and linear.input[2] and not g.is_const(linear.input[2]):
        return f"{where}: bias is not constant"
    out = _linear_out(g, linear)
    c = g.value(m["const"])
    vec = None if out is None else channel_vector(c, out[0], out[1], out[2])
    if vec is None:
        return f"{where}: constant {c.shape} is not per output channel"
    if node.op_type in ("Mul", "Div") and g.producer(linear.input[1], "ConstantOfShape") and not np.all(vec == vec[0]):
        return f"{where}: weight is generated at load time; folding would store it"
    if node.op_type == "Div" and np.any(vec == 0):
        return f"{where}: division by zero"
    m.data["vec"] = vec
    return None


def rewrite_affine(g: FusionGraph, m: Match) -> None:
    node, linear = m.nodes
    vec = m["vec"]
    weight = g.value(linear.input[1])
    bias = g.value(linear.input[2]) if len(linear.input) > 2 and linear.input[2] else None
    w = np.asarray(weight, np.float64)
    zeros = np.zeros_like(vec)
    if node.op_type in ("Mul", "Div"):
        scale = vec if node.op_type == "Mul" else 1.0 / vec
        new_w, new_b = _fold_after(linear, w, bias, scale, zeros)
        keep_bias = bias is not None
    else:
        shift = vec if node.op_type == "Add" else -vec
        new_w, new_b = _fold_after(linear, w, bias, np.ones_like(vec), shift)
        keep_bias = True
    base = linear.name or linear.output[0]
    inputs = [linear.input[0], g.add_constant(new_w.astype(weight.dtype), f"{base}_w_scaled", before=linear)]
    if keep_bias and linear.op_type != "MatMul":
        inputs.append(g.add_constant(new_b.astype(weight.dtype), f"{base}_b_shifted", before=linear))
    del linear.input[:]
    linear.input.extend(inputs)
    if linear.op_type == "Gemm" and keep_bias:
        set_attr(linear, "beta", 1.0)
    linear.output[0] = node.output[0]
    g.remove(node)


# ---------------------------------------------------------------- MatMul + Add -> Gemm
def match_matmul_add(g: FusionGraph, add) -> Match | None:
    if len(add.input) != 2:
        return None
    for i in (0, 1):
        mm = g.producer(add.input[i], "MatMul")
        if mm is not None:
            return Match([add, mm], {"bias": add.input[1 - i]})
    return None


def check_matmul_add(g: FusionGraph, m: Match) -> str | None:
    add, mm = m.nodes
    where = f"MatMul {mm.name!r} + Add not fused to Gemm"
    a_shape, b_shape, c_shape = g.shape(mm.input[0]), g.shape(mm.input[1]), g.shape(m["bias"])
    if not g.private(mm.output[0]):
        return f"{where}: MatMul output has other readers"
    if a_shape is None or len(a_shape) != 2 or b_shape is None or len(b_shape) != 2:
        return f"{where}: operands not known to be 2-D (kept: Gemm would need reshapes)"
    if not g.is_float(mm.input[1]) or c_shape is None or len(c_shape) > 2:
        return f"{where}: bias shape unknown or not float"
    padded = (1,) * (2 - len(c_shape)) + tuple(c_shape)
    out = (a_shape[0], b_shape[1])
    if any(c not in (1, o) or (c != 1 and o is None) for c, o in zip(padded, out)):
        return f"{where}: bias {c_shape} would grow the output {out}"
    return None


def rewrite_matmul_add(g: FusionGraph, m: Match) -> None:
    add, mm = m.nodes
    gemm = g.make_node("Gemm", [mm.input[0], mm.input[1], m["bias"]], [add.output[0]], "matmul_add_to_gemm",
                       mm.name or add.name)
    g.insert_before(gemm, add)
    g.remove(mm, add)


# ---------------------------------------------------------------- Sum, constant chains
def match_sum(g: FusionGraph, node) -> Match | None:
    return Match([node]) if len(node.input) in (1, 2) else None


def rewrite_sum(g: FusionGraph, m: Match) -> None:
    node = m.anchor
    if len(node.input) == 2:
        node.op_type = "Add"
        return
    g.bypass(node, node.input[0])


def check_sum(g: FusionGraph, m: Match) -> str | None:
    node = m.anchor
    if len(node.input) == 1 and node.output[0] in g.outputs:
        return f"Sum {node.name!r} of one input kept: it writes a graph output"
    return None


def match_const_chain(g: FusionGraph, node) -> Match | None:
    if len(node.input) != 2:
        return None
    split = _split_const(g, node)
    if split is None:
        return None
    inner = g.producer(split[0], node.op_type)
    if inner is None or len(inner.input) != 2:
        return None
    inner_split = _split_const(g, inner)
    if inner_split is None or not g.private(inner.output[0]):
        return None  # a shared inner result is the common case, not a near miss
    return Match([node, inner], {"outer": split[1], "inner": inner_split[1], "x": inner_split[0]})


def check_const_chain(g: FusionGraph, m: Match) -> str | None:
    node, inner = m.nodes
    if not (g.is_float(m["outer"]) and g.is_float(m["inner"])):
        return f"{node.op_type} chain at {node.name!r} not merged: constants are not float"
    combined = np.broadcast_shapes(g.value(m["outer"]).shape, g.value(m["inner"]).shape)
    if int(np.prod(combined)) > 4 * max(g.value(m["outer"]).size, g.value(m["inner"]).size, 1):
        return f"{node.op_type} chain at {node.name!r} not merged: combined constant would grow"
    return None


def rewrite_const_chain(g: FusionGraph, m: Match) -> None:
    node, inner = m.nodes
    a, b = g.value(m["inner"]), g.value(m["outer"])
    value = (a.astype(np.float64) * b) if node.op_type == "Mul" else (a.astype(np.float64) + b)
    name = g.add_constant(value.astype(a.dtype), f"{node.name or node.output[0]}_const", before=inner)
    del node.input[:]
    node.input.extend([m["x"], name])
    g.remove(inner)


RULES = [
    Rule("scale_folded", ("Mul", "Div"), match_affine, check_affine, rewrite_affine,
         "per-channel constant Mul/Div after Conv/ConvTranspose/Gemm/MatMul folded into the weight"),
    Rule("bias_folded", ("Add", "Sub"), match_affine, check_affine, rewrite_affine,
         "per-channel constant Add/Sub after Conv/ConvTranspose/Gemm folded into the bias"),
    Rule("matmul_add_to_gemm", ("Add",), match_matmul_add, check_matmul_add, rewrite_matmul_add,
         "2-D MatMul + Add to Gemm"),
    Rule("sum_to_add", ("Sum",), match_sum, check_sum, rewrite_sum, "Sum of two inputs to Add, of one removed"),
    Rule("constant_chain_merged", ("Mul", "Add"), match_const_chain, check_const_chain, rewrite_const_chain,
         "(x op a) op b to x op (a op b) for constant a, b"),
]
