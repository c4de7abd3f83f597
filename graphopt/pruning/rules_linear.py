"""Coupling rules for the ops that own weights: Conv, ConvTranspose, Gemm, MatMul.

Each is a source (a new group for its output channels / columns, with the weight's output
axis and the bias to slice, axes from graphopt.ir.axes) and a sink (its weight's
reduction axis sliced by the input's layout). Grouped and depthwise Convs pass channels
through whole conv groups; MatMul of two activations couples the contracted axis of
both operands and carries batch / row / column axes (attention heads).
"""

from __future__ import annotations

import math
from fractions import Fraction

from graphopt.ir import weight_axes
from graphopt.pruning.rules import attr, block_inputs, new_source, only_input, out, rule

@rule("Conv", "ConvTranspose")
def conv(cp, node):
    lay = only_input(cp, node) if node.input[0] in cp.layouts else None
    if any(n in cp.layouts for n in node.input[1:] if n):
        block_inputs(cp, node, f"{node.op_type} {node.name}: channels reach its weight")
        return
    w = cp.const(node.input[1])
    bias_ok = len(node.input) < 3 or not node.input[2] or cp.const(node.input[2]) is not None
    if w is None or not bias_ok:
        cp.block(lay, f"{node.op_type} {node.name}: weight not constant")
        return
    groups = attr(node, "group", 1)
    axes = weight_axes(node.op_type)
    if lay is not None and lay.axis != 1:
        cp.block(lay, f"{node.op_type} {node.name}: channels not on axis 1")
        return
    if groups == 1:
        if lay is not None:
            cp.act("slice", node, 1, axes.reduction, lay, "weight")
            cp.sink_inputs.append((node.input[0], lay))
        result = new_source(cp, node, w.shape[axes.output] * (1 if node.op_type == "Conv" else groups), 1)
        _slice_weight_and_bias(cp, node, axes.output, result)
    elif node.op_type == "Conv" and lay is not None:
        reason = _grouped(cp, node, lay, w, groups)
        if reason:
            cp.block(lay, f"Conv {node.name}: grouped convolution ({groups} groups): {reason}")
    else:
        cp.block(lay, f"{node.op_type} {node.name}: grouped convolution ({groups} groups)")


def _grouped(cp, node, lay, w, groups) -> str | None:
    """Grouped / depthwise Conv: whole conv groups are pruned, `group` shrinks with them.

    With c input and o output channels per conv group, output element e belongs to conv
    group e // o, fed by input elements [g*c, (g+1)*c): the output layout is the input
    layout scaled by o/c, and the unit must cover whole conv groups (c elements).
    """
    c, o = w.shape[1], w.shape[0] // groups
    if c * groups != lay.size:
        return "channel count does not match"
    offset = 0
    for seg in lay.segs:
        if offset % c or seg.size % c:
            return "a conv group straddles two coupled groups"
        offset += seg.size
        if seg.group is not None:
            per_group = Fraction(c) / seg.scale
            if per_group.denominator != 1:
                return "a conv group splits a channel"
            g = cp.group(seg.group)
            g.unit = math.lcm(g.unit, int(per_group))
    result = lay.scaled(Fraction(o, c))
    cp.act("slice", node, 1, 0, result, "weight")
    cp.act("group", node, 0, 1, lay, extra=c)
    if len(node.input) > 2 and node.input[2]:
        cp.act("slice", node, 2, 0, result, "bias")
    out(cp, node, result)
    return None


def _slice_weight_and_bias(cp, node, out_axis, result):
    cp.act("slice", node, 1, out_axis, result, "weight")
    if len(node.input) > 2 and node.input[2]:
        cp.act("slice", node, 2, 0, result, "bias")


@rule("Gemm")
def gemm(cp, node):
    a_lay = cp.layouts.get(node.input[0])
    if any(n in cp.layouts for n in node.input[1:] if n):
        block_inputs(cp, node, f"Gemm {node.name}: channels reach B or C")
        return
    b = cp.const(node.input[1])
    axes = weight_axes("Gemm", {"transB": attr(node, "transB", 0)})
    if a_lay is not None:
        k_axis = 0 if attr(node, "transA", 0) else 1
        if b is None or a_lay.axis != k_axis:
            cp.block(a_lay, f"Gemm {node.name}: channels not on the reduction axis of a constant B")
        else:
            cp.act("slice", node, 1, axes.reduction, a_lay, "weight")
            cp.sink_inputs.append((node.input[0], a_lay))
    c_name = node.input[2] if len(node.input) > 2 else ""
    c = cp.const(c_name)
    if b is None or (c_name and c is None):
        return
    n = b.shape[axes.output]
    result = new_source(cp, node, n, 1)
    cp.act("slice", node, 1, axes.output, result, "weight")
    if c is not None and c.ndim >= 1 and c.shape[-1] == n and n > 1:
        cp.act("slice", node, 2, c.ndim - 1, result, "bias")


@rule("MatMul")
def matmul(cp, node):
    a, b = node.input[0], node.input[1]
    la, lb = cp.layouts.get(a), cp.layouts.get(b)
    bc = cp.const(b)
    if bc is not None and lb is None and cp.const(a) is None:
        _matmul_weight(cp, node, la, bc)
    elif bc is None and cp.const(a) is None:
        _matmul_activations(cp, node, la, lb)
    else:
        block_inputs(cp, node, f"MatMul {node.name}: constant left operand")


def _matmul_weight(cp, node, la, bc):
    ra = cp.rank(node.input[0])
    if la is not None:
        if la.axis == ra - 1 and bc.ndim >= 2:
            cp.act("slice", node, 1, bc.ndim - 2, la, "weight")
            cp.sink_inputs.append((node.input[0], la))
        else:
            cp.block(la, f"MatMul {node.name}: channels on a batch axis meet a constant weight")
            return
    rank = cp.rank(node.output[0])
    if bc.ndim >= 2 and rank is not None:
        result = new_source(cp, node, bc.shape[-1], rank - 1)
        cp.act("slice", node, 1, bc.ndim - 1, result, "weight")


def _matmul_activations(cp, node, la, lb):
    """A[..., M, K] @ B[..., K, N]: K couples A and B; M, N and batch axes carry through."""
    ra, rb, r = cp.rank(node.input[0]), cp.rank(node.input[1]), cp.rank(node.output[0])
    if la is None and lb is None:
        return
    if None in (ra, rb, r) or ra < 2 or rb < 2:
        block_inputs(cp, node, f"MatMul {node.name}: operands below rank 2")
        return
    pa = None if la is None else la.axis + r - ra
    pb = None if lb is None else lb.axis + r - rb
    why = f"MatMul {node.name}"
    if pa == r - 1 or pb == r - 2:  # the contracted axis
        if pa == r - 1 and pb == r - 2 and cp.unite(la, lb, why):
            return
        block_inputs(cp, node, f"{why}: contracted channels on one operand only")
        return
    if pa is not None and pb is not None:
        if pa == pb and pa < r - 2 and cp.unite(la, lb, why):
            out(cp, node, la.moved(pa))
            return
        block_inputs(cp, node, f"{why}: channels on different axes")
        return
    lay, pos, other, orank = (la, pa, node.input[1], rb) if la is not None else (lb, pb, node.input[0], ra)
    if pos < r - 2:
        local = pos - (r - orank)
        if local >= 0 and cp.shape(other)[local] != 1:
            cp.block(lay, f"{why}: batch channels meet an untracked operand")
            return
    out(cp, node, lay.moved(pos))
