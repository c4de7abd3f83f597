"""BatchNormalization folding into the neighbouring linear op.

Inference-mode BatchNormalization is a per-channel affine map on axis 1:

    BN(y)[c] = gamma[c] * (y[c] - mean[c]) / sqrt(var[c] + eps) + beta[c] = s[c] * y[c] + t[c]
    s = gamma / sqrt(var + eps),   t = beta - mean * s

After a linear op whose output channel o is produced by weight slice W_o and bias b_o:

    BN(W x + b) = (s W) x + (s b + t)      so  W'_o = s_o W_o,  b'_o = s_o b_o + t_o

Output-channel axis per op comes from graphopt/ir/axes.py: Conv axis 0; ConvTranspose axis 1
within each group (W is [C_in, C_out/g, k...], output channel o = group * C_out/g + j);
Gemm axis 1 of B (axis 0 with transB), with C' = s * beta * C + t and beta set to 1;
MatMul with a constant 2-D weight and a 2-D output becomes Gemm(A, s W, t).

A per-channel constant after BN folds into BN itself: BN(y)*c has gamma*c, beta*c;
BN(y)+c has beta+c.

Before a Conv (BN output read only by the Conv), with input channel c of group gi:

    Conv(s x + t) = Conv_{W'}(x) + b''    W'[o, ci, k] = W[o, ci, k] * s[c]
    b''[o] = b[o] + sum_{ci, k} W[o, ci, k] * t[c]

which is exact only when the Conv pads nothing: a padded border would see t, not 0.
All arithmetic is in float64, cast back to the weight's dtype.
"""

from __future__ import annotations

import logging

import numpy as np

from graphopt.fusion.graph import FusionGraph, attr, set_attr
from graphopt.fusion.rule import Match, Rule
from graphopt.ir.axes import weight_axes

log = logging.getLogger(__name__)

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def bn_affine(g: FusionGraph, bn) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) of an inference-mode BN with constant parameters, else None."""
    values = [g.value(name) for name in bn.input[1:5]]
    if len(values) != 4 or any(v is None for v in values):
        return None
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in values)
    s = gamma / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    return s, beta - mean * s


def bn_reason(g: FusionGraph, bn) -> str | None:
    """Why `bn` cannot be treated as a per-channel affine map, or None."""
    if any(o for o in bn.output[1:]):
        return "BN has training outputs"
    if attr(bn, "training_mode", 0) or attr(bn, "spatial", 1) != 1:
        return "BN is in training mode or non-spatial"
    if not all(g.is_const(name) for name in bn.input[1:5]):
        return "BN parameters are not constant"
    return None


def generated_weight_reason(g: FusionGraph, weight: str, s: np.ndarray) -> str | None:
    """A load-time generated weight scaled non-uniformly would have to be stored in the file."""
    if g.producer(weight, "ConstantOfShape") is not None and not np.all(s == s[0]):
        return "weight is generated at load time (ConstantOfShape); folding would store it"
    return None


# ---------------------------------------------------------------- linear op -> BN
def match_linear_bn(g: FusionGraph, bn) -> Match | None:
    if len(bn.input) < 5:
        return None
    linear = g.producer(bn.input[0])
    if linear is None or linear.op_type not in LINEAR_OPS:
        return None
    return Match([bn, linear])


def check_linear_bn(g: FusionGraph, m: Match) -> str | None:
    bn, linear = m.nodes
    where = f"BN {bn.name!r} not folded into {linear.name!r}"
    reason = bn_reason(g, bn) or _linear_reason(g, linear, bn)
    if reason:
        return f"{where}: {reason}"
    s, _ = bn_affine(g, bn)
    weight = g.value(linear.input[1])
    axes = weight_axes(linear.op_type, {"transB": attr(linear, "transB", 0)}, weight.ndim)
    channels = weight.shape[axes.output] * (attr(linear, "group", 1) if linear.op_type == "ConvTranspose" else 1)
    if s.size != channels:
        return f"{where}: BN has {s.size} channels, weight has {channels}"
    reason = generated_weight_reason(g, linear.input[1], s)
    return f"{where}: {reason}" if reason else None


def _linear_reason(g: FusionGraph, linear, bn) -> str | None:
    if not g.private(linear.output[0]):
        return "its output has other readers"
    if not g.is_const(linear.input[1]):
        return "weight is not constant"
    if len(linear.input) > 2 and linear.input[2] and not g.is_const(linear.input[2]):
        return "bias is not constant"
    if not g.is_float(linear.input[1]):
        return "weight is not floating point"
    if linear.op_type == "MatMul":
        if g.value(linear.input[1]).ndim != 2:
            return "MatMul weight is not 2-D"
        if g.rank(linear.output[0]) != 2:
            return "MatMul output is not known to be 2-D (BN channels would not be its columns)"
    if linear.op_type == "Gemm" and g.rank(linear.output[0]) not in (None, 2):
        return "Gemm output is not 2-D"
    return None


def rewrite_linear_bn(g: FusionGraph, m: Match) -> None:
    bn, linear = m.nodes
    s, t = bn_affine(g, bn)
    weight = g.value(linear.input[1])
    dtype = weight.dtype
    bias = g.value(linear.input[2]) if len(linear.input) > 2 and linear.input[2] else None
    new_w, new_b = _fold_after(linear, np.asarray(weight, np.float64), bias, s, t)
    base = linear.name or linear.output[0]
    w_name = g.add_constant(new_w.astype(dtype), f"{base}_w_bn", before=linear)
    b_name = g.add_constant(new_b.astype(dtype), f"{base}_b_bn", before=linear)
    if linear.op_type == "MatMul":
        gemm = g.make_node("Gemm", [linear.input[0], w_name, b_name], [bn.output[0]], "matmul_bn_folded", base)
        g.insert_before(gemm, linear)
        g.remove(linear, bn)
        return
    del linear.input[1:]
    linear.input.extend([w_name, b_name])
    if linear.op_type == "Gemm":
        set_attr(linear, "beta", 1.0)
    linear.output[0] = bn.output[0]
    g.remove(bn)


def _fold_after(linear, w: np.ndarray, bias, s: np.ndarray, t: np.ndarray):
    """W' and b' for BN after `linear` (formulas in the module docstring)."""
    op = linear.op_type
    if op == "Conv":
        scaled = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        b = np.zeros_like(s) if bias is None else np.asarray(bias, np.float64).reshape(-1)
        return scaled, b * s + t
    if op == "ConvTranspose":
        groups = attr(linear, "group", 1)
        grouped = w.reshape((groups, w.shape[0] // groups) + w.shape[1:])
        scaled = grouped * s.reshape((groups, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        b = np.zeros_like(s) if bias is None else np.asarray(bias, np.float64).reshape(-1)
        return scaled.reshape(w.shape), b * s + t
    if op == "Gemm":
        trans_b = attr(linear, "transB", 0)
        scaled = w * (s.reshape(-1, 1) if trans_b else s.reshape(1, -1))
        beta = float(attr(linear, "beta", 1.0))
        c = np.zeros_like(s) if bias is None else np.asarray(bias, np.float64) * beta
        if c.ndim == 2 and c.shape[-1] == 1:
            c = np.broadcast_to(c, (c.shape[0], s.size))
        return scaled, c * s + t
    return w * s.reshape(1, -1), t  # MatMul [K, N]


# ---------------------------------------------------------------- BN -> Conv
def match_bn_conv(g: FusionGraph, conv) -> Match | None:
    if len(conv.input) < 2:
        return None
    bn = g.producer(conv.input[0], "BatchNormalization")
    return None if bn is None else Match([conv, bn])


def check_bn_conv(g: FusionGraph, m: Match) -> str | None:
    conv, bn = m.nodes
    where = f"BN {bn.name!r} not folded into the following {conv.name!r}"
    reason = bn_reason(g, bn)
    if reason is None and not g.private(bn.output[0]):
        reason = "BN output has other readers"
    if reason is None and not g.is_const(conv.input[1]):
        reason = "weight is not constant"
    if reason is None and len(conv.input) > 2 and conv.input[2] and not g.is_const(conv.input[2]):
        reason = "bias is not constant"
    if reason is None and not g.is_float(conv.input[1]):
        reason = "weight is not floating point"
    if reason is None and (any(attr(conv, "pads", [])) or attr(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
        reason = "the Conv pads its input (border would see BN's shift, not 0)"
    if reason is None:
        s, _ = bn_affine(g, bn)
        w = g.value(conv.input[1])
        if s.size != w.shape[1] * attr(conv, "group", 1):
            reason = f"BN has {s.size} channels, Conv reads {w.shape[1] * attr(conv, 'group', 1)}"
        else:
            reason = generated_weight_reason(g, conv.input[1], s)
    return f"{where}: {reason}" if reason else None


def rewrite_bn_conv(g: FusionGraph, m: Match) -> None:
    conv, bn = m.nodes
    s, t = bn_affine(g, bn)
    weight = g.value(conv.input[1])
    w = np.asarray(weight, np.float64)
    groups = attr(conv, "group", 1)
    out_ch, in_per_group = w.shape[0], w.shape[1]
    grouped = w.reshape((groups, out_ch // groups, in_per_group) + w.shape[2:])
    s_g = s.reshape((groups, 1, in_per_group) + (1,) * (w.ndim - 2))
    t_g = t.reshape((groups, 1, in_per_group) + (1,) * (w.ndim - 2))
    new_w = (grouped * s_g).reshape(w.shape)
    shift = (grouped * t_g).reshape(out_ch, -1).sum(axis=1)
    bias = g.value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    new_b = shift + (0.0 if bias is None else np.asarray(bias, np.float64).reshape(-1))
    base = conv.name or conv.output[0]
    w_name = g.add_constant(new_w.astype(weight.dtype), f"{base}_w_prebn", before=conv)
    b_name = g.add_constant(new_b.astype(weight.dtype), f"{base}_b_prebn", before=conv)
    del conv.input[:]
    conv.input.extend([bn.input[0], w_name, b_name])
    g.remove(bn)


# ---------------------------------------------------------------- BN -> per-channel Mul/Add
def match_bn_affine(g: FusionGraph, node) -> Match | None:
    if len(node.input) != 2:
        return None
    for i in ((0, 1) if node.op_type in ("Mul", "Add") else (0,)):
        bn = g.producer(node.input[i], "BatchNormalization")
        if bn is not None and g.is_const(node.input[1 - i]):
            return Match([node, bn], {"const": node.input[1 - i]})
    return None


def check_bn_affine(g: FusionGraph, m: Match) -> str | None:
    """BN followed by y*c or y+c (c per channel) is a BN with gamma*c, beta*c or beta+c."""
    node, bn = m.nodes
    where = f"{node.op_type} {node.name!r} not folded into BN {bn.name!r}"
    reason = bn_reason(g, bn)
    if reason is None and not g.private(bn.output[0]):
        reason = "BN output has other readers"
    rank = g.rank(bn.input[0])
    c = g.value(m["const"])
    if reason is None and (rank is None or c.ndim > rank):
        reason = "rank unknown or the constant would grow the output"
    if reason is None:
        from graphopt.fusion.affine import channel_vector
        vec = channel_vector(c, rank, rank - 1, g.value(bn.input[1]).size)
        if vec is None:
            reason = f"constant {c.shape} is not per channel"
        elif node.op_type == "Div" and np.any(vec == 0):
            reason = "division by zero"
        m.data["vec"] = vec
    return f"{where}: {reason}" if reason else None


def rewrite_bn_affine(g: FusionGraph, m: Match) -> None:
    node, bn = m.nodes
    vec = m["vec"]
    gamma, beta = g.value(bn.input[1]), g.value(bn.input[2])
    g64, b64 = gamma.astype(np.float64).reshape(-1), beta.astype(np.float64).reshape(-1)
    if node.op_type in ("Mul", "Div"):
        k = vec if node.op_type == "Mul" else 1.0 / vec
        g64, b64 = g64 * k, b64 * k
    else:
        b64 = b64 + (vec if node.op_type == "Add" else -vec)
    base = bn.name or bn.output[0]
    bn.input[1] = g.add_constant(g64.astype(gamma.dtype), f"{base}_scale", before=bn)
    bn.input[2] = g.add_constant(b64.astype(beta.dtype), f"{base}_bias", before=bn)
    bn.output[0] = node.output[0]
    g.remove(node)


RULES = [
    Rule("bn_affine_folded", ("Mul", "Add", "Sub", "Div"), match_bn_affine, check_bn_affine, rewrite_bn_affine,
         "per-channel constant Mul/Add/Sub/Div after BatchNormalization folded into its scale and bias"),
    Rule("bn_folded", ("BatchNormalization",), match_linear_bn, check_linear_bn, rewrite_linear_bn,
         "BatchNormalization after Conv/ConvTranspose/Gemm/MatMul folded into its weights"),
    Rule("bn_before_conv_folded", ("Conv",), match_bn_conv, check_bn_conv, rewrite_bn_conv,
         "BatchNormalization before an unpadded Conv folded into its weights"),
]
