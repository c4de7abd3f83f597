"""Per-op coupling rules: how each op carries, couples or absorbs tracked channels.

A rule reads the layouts of its inputs from `cp.layouts`, records actions, sets the
layouts of its outputs, and blocks (with a reason) whatever it cannot handle exactly.
See coupling.py for the overall walk and layout.py for the element <-> unit mapping.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx

from graphopt.ir import weight_axes
from graphopt.pruning.coupling import Coupling
from graphopt.pruning.layout import Layout, Seg

UNARY = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
         "Selu", "Celu", "Gelu", "Softplus", "Softsign", "Erf", "Exp", "Log", "Abs", "Neg",
         "Sqrt", "Reciprocal", "Identity", "Dropout", "Cast", "Floor", "Ceil", "Round", "Sign",
         "Mish", "ThresholdedRelu", "Sin", "Cos", "Shrink", "IsNaN", "IsInf", "Not"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu"}
POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}

RULES = {}


def rule(*ops):
    def deco(fn):
        for op in ops:
            RULES[op] = fn
        return fn
    return deco


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def tracked(cp: Coupling, node: onnx.NodeProto) -> list[tuple[int, Layout]]:
    return [(i, cp.layouts[n]) for i, n in enumerate(node.input) if n in cp.layouts]


def block_inputs(cp: Coupling, node: onnx.NodeProto, reason: str) -> None:
    for _, lay in tracked(cp, node):
        cp.block(lay, reason)


def out(cp: Coupling, node: onnx.NodeProto, layout: Layout, index: int = 0) -> None:
    cp.layouts[node.output[index]] = layout
    cp.touch(layout, node)


def _is_scalar(value) -> bool:
    return value is not None and np.size(value) <= 1


def new_source(cp: Coupling, node: onnx.NodeProto, channels: int, out_axis: int) -> Layout:
    gid = cp.new_group(channels, node)
    layout = Layout(out_axis, (Seg(gid, channels),))
    out(cp, node, layout)
    return layout


def only_input(cp: Coupling, node: onnx.NodeProto) -> Layout | None:
    """Layout of input 0 when it is the only tracked input (others must be scalars)."""
    items = tracked(cp, node)
    if not items:
        return None
    if len(items) > 1 or items[0][0] != 0:
        block_inputs(cp, node, f"{node.op_type} {node.name}: channels enter a side input")
        return None
    return items[0][1]


@rule(*UNARY)
def unary(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    if any(not _is_scalar(cp.const(n)) for n in node.input[1:] if n):
        cp.block(lay, f"{node.op_type} {node.name}: non-scalar side input")
        return
    out(cp, node, lay)


@rule(*BINARY)
def elementwise(cp, node):
    items = tracked(cp, node)
    if not items:
        return
    rank = cp.rank(node.output[0])
    ranks = [cp.rank(n) for n in node.input]
    if rank is None or None in ranks:
        block_inputs(cp, node, f"{node.op_type} {node.name}: unknown ranks")
        return
    axes = {lay.axis + rank - ranks[i] for i, lay in items}
    if len(axes) != 1:
        block_inputs(cp, node, f"{node.op_type} {node.name}: channels on different axes")
        return
    axis = axes.pop()
    first = items[0][1]
    for _, lay in items[1:]:
        if not cp.unite(first, lay, f"{node.op_type} {node.name}"):
            return
    result = Layout(axis, first.segs)
    for i, name in enumerate(node.input):
        if name in cp.layouts:
            continue
        local = axis - (rank - ranks[i])
        dims = cp.shape(name)
        if dims is None:
            cp.block(first, f"{node.op_type} {node.name}: operand {name} of unknown shape")
            return
        if local < 0 or dims[local] == 1:
            continue  # broadcast along the channels: nothing to slice
        if cp.const(name) is None:
            cp.block(first, f"{node.op_type} {node.name}: per-channel operand {name} is not constant")
            return
        role = "bias" if node.op_type in ("Add", "Sub", "Sum") else "const"
        cp.act("slice", node, i, local, result, role)
    out(cp, node, result)


@rule("BatchNormalization", "InstanceNormalization")
def norm(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    params = range(1, 5) if node.op_type == "BatchNormalization" else range(1, 3)
    if lay.axis != 1 or any(cp.const(node.input[i]) is None for i in params):
        cp.block(lay, f"{node.op_type} {node.name}: channel axis or parameters not constant")
        return
    for i in params:
        cp.act("slice", node, i, 0, lay, {1: "scale", 2: "bias"}.get(i, "stat"))
    out(cp, node, lay)


@rule(*POOL)
def pool(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    if lay.axis != 1 or (len(node.output) > 1 and node.output[1]):
        cp.block(lay, f"{node.op_type} {node.name}: channels not on axis 1 or indices output used")
        return
    out(cp, node, lay)


@rule("Resize", "Upsample")
def resize(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    scales = cp.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if node.op_type == "Upsample":
        scales = cp.const(node.input[1]) if len(node.input) > 1 else attr(node, "scales")
    if sizes is not None:
        if cp.const(sizes) is None or attr(node, "axes") is not None:
            cp.block(lay, f"Resize {node.name}: sizes not constant")
            return
        cp.act("shape", node, 3, lay.axis, lay)
    elif scales is not None and np.size(scales) and float(np.asarray(scales)[lay.axis]) != 1.0:
        cp.block(lay, f"Resize {node.name} scales the channel axis")
        return
    out(cp, node, lay)


@rule("Pad")
def pad(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    pads = cp.const(node.input[1]) if len(node.input) > 1 else np.asarray(attr(node, "pads", []))
    axes_given = len(node.input) > 3 and node.input[3]
    rank = cp.rank(node.input[0])
    if pads is None or axes_given or rank is None or pads[lay.axis] or pads[lay.axis + rank]:
        cp.block(lay, f"Pad {node.name}: pads the channel axis or pads not constant")
        return
    out(cp, node, lay)


@rule("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization")
def normalize_over(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    rank = cp.rank(node.input[0])
    default = -1 if (node.op_type == "LayerNormalization" or cp.opset >= 13) else 1
    axis = attr(node, "axis", default) % rank
    whole_tail = node.op_type == "LayerNormalization" or cp.opset < 13
    if lay.axis == axis or (whole_tail and lay.axis >= axis):
        cp.block(lay, f"{node.op_type} {node.name} normalizes across the channels")
        return
    out(cp, node, lay)


@rule("Transpose")
def transpose(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    rank = cp.rank(node.input[0])
    perm = list(attr(node, "perm", list(range(rank))[::-1]))
    out(cp, node, lay.moved(perm.index(lay.axis)))


def _axes_of(cp, node, index=1):
    if len(node.input) > index and node.input[index]:
        value = cp.const(node.input[index])
        return None if value is None else [int(v) for v in np.ravel(value)]
    return attr(node, "axes")


@rule("Squeeze", "Unsqueeze")
def squeeze(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    axes = _axes_of(cp, node)
    if axes is None:
        cp.block(lay, f"{node.op_type} {node.name}: axes unknown")
        return
    if node.op_type == "Squeeze":
        axes = [a % cp.rank(node.input[0]) for a in axes]
        if lay.axis in axes:
            cp.block(lay, f"Squeeze {node.name} removes the channel axis")
            return
        out(cp, node, lay.moved(lay.axis - sum(a < lay.axis for a in axes)))
        return
    rank_out = cp.rank(node.output[0])
    axes = {a % rank_out for a in axes}
    kept = [i for i in range(rank_out) if i not in axes]
    out(cp, node, lay.moved(kept[lay.axis]))


@rule(*REDUCE)
def reduce(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    axes = _axes_of(cp, node) if (cp.opset >= 18 or node.op_type == "ReduceSum") and cp.opset >= 13 \
        else attr(node, "axes")
    rank = cp.rank(node.input[0])
    if not axes:
        cp.block(lay, f"{node.op_type} {node.name} reduces every axis")
        return
    axes = [a % rank for a in axes]
    if lay.axis in axes:
        cp.block(lay, f"{node.op_type} {node.name} reduces over the channels")
        return
    shift = 0 if attr(node, "keepdims", 1) else sum(a < lay.axis for a in axes)
    out(cp, node, lay.moved(lay.axis - shift))


@rule("Flatten")
def flatten(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    dims = cp.shape(node.input[0])
    axis = attr(node, "axis", 1) % len(dims)
    tail = dims[lay.axis + 1:]
    if axis != lay.axis or not all(isinstance(d, int) and d > 0 for d in tail):
        cp.block(lay, f"Flatten {node.name}: channels not leading the flattened axis or dynamic spatial size")
        return
    out(cp, node, Layout(1, lay.scaled(int(np.prod(tail))).segs))


@rule("Reshape")
def reshape(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    reason = _reshape(cp, node, lay)
    if reason:
        cp.block(lay, f"Reshape {node.name}: {reason}")


def _reshape(cp, node, lay) -> str | None:
    src, dst = cp.shape(node.input[0]), cp.shape(node.output[0])
    if src is None or dst is None:
        return "shapes unknown"
    a = lay.axis
    prefix = src[:a]
    if dst[:a] != prefix or any(d is None for d in prefix):
        return "dimensions before the channel axis change"
    entry = _shape_entry(cp, node.input[1], a)
    if isinstance(entry, str):
        return entry
    after_src, after_dst = src[a + 1:], dst[a + 1:]
    if not all(isinstance(d, int) for d in [src[a], dst[a]] + after_src + after_dst):
        return "dynamic sizes after the channel axis"
    if dst[a] == src[a] and after_src == after_dst:
        result = lay
    elif dst[a] % src[a] == 0 and int(np.prod(after_src)) == dst[a] // src[a] * int(np.prod(after_dst)):
        result = lay.scaled(dst[a] // src[a])  # merges the channels with inner dims
    elif src[a] % dst[a] == 0 and len(lay.segs) == 1 and lay.segs[0].group is not None:
        result = lay.scaled(Fraction(dst[a], src[a]))  # splits channels into (units, unit size)
        cp.need_unit(result.segs[0])
    else:
        return f"cannot map {src} -> {dst} onto channel units"
    cp.act("shape", node, 1, a, result, extra=entry)
    out(cp, node, result)
    return None


def _shape_entry(cp, name: str, index: int):
    """Where entry `index` of a Reshape shape lives: ('const', name) or a Concat piece."""
    value = cp.const(name)
    if value is not None:
        return ("const", name, index)
    prod = cp.producer.get(name)
    if prod is None or prod.op_type != "Concat":
        return "shape is computed at run time"
    offset = 0
    for i, piece in enumerate(prod.input):
        dims = cp.shape(piece)
        if dims is None or len(dims) != 1 or not isinstance(dims[0], int):
            return "shape pieces of unknown length"
        if offset <= index < offset + dims[0]:
            value = static_value(cp, piece)
            if value is None:
                return "the channel entry of the shape is computed at run time"
            return ("concat", cp.index_of[id(prod)], i, index - offset, value)
        offset += dims[0]
    return "shape entry not found"


def static_value(cp, name: str, depth: int = 0) -> np.ndarray | None:
    """Value of a small shape tensor known before run time: a constant, or
    Unsqueeze / Gather of Shape(X) at dims of X that shape inference found static."""
    value = cp.const(name)
    if value is not None or depth > 4:
        return value
    node = cp.producer.get(name)
    if node is None:
        return None
    if node.op_type == "Shape" and not attr(node, "start") and attr(node, "end") is None:
        dims = cp.shape(node.input[0])
        return np.array(dims, np.int64) if dims and all(isinstance(d, int) for d in dims) else \
            _partial_shape(dims)
    if node.op_type == "Gather":
        data, idx = static_value(cp, node.input[0], depth + 1), cp.const(node.input[1])
        if data is None or idx is None or attr(node, "axis", 0) != 0:
            return None
        picked = np.take(data, idx)
        return None if np.any(picked < 0) else picked
    if node.op_type == "Unsqueeze":
        data, axes = static_value(cp, node.input[0], depth + 1), _axes_of(cp, node)
        return None if data is None or axes is None else np.expand_dims(data, tuple(axes))
    return None


def _partial_shape(dims) -> np.ndarray | None:
    """Shape with unknown dims as -1 (Gather of a known dim still resolves)."""
    if dims is None:
        return None
    return np.array([d if isinstance(d, int) else -1 for d in dims], np.int64)


@rule("Concat")
def concat(cp, node):
    items = tracked(cp, node)
    if not items:
        return
    rank = cp.rank(node.output[0])
    axis = attr(node, "axis") % rank
    if any(lay.axis != axis for _, lay in items):
        first = items[0][1]
        if len(items) != len([n for n in node.input if n]) or any(
                lay.axis != first.axis for _, lay in items):
            block_inputs(cp, node, f"Concat {node.name}: channels meet untracked operands")
            return
        for _, lay in items[1:]:
            if not cp.unite(first, lay, f"Concat {node.name}"):
                return
        out(cp, node, first)
        return
    segs = []
    for name in node.input:
        if name in cp.layouts:
            segs.extend(cp.layouts[name].segs)
            continue
        dims = cp.shape(name)
        if dims is None or not isinstance(dims[axis], int):
            block_inputs(cp, node, f"Concat {node.name}: operand {name} of unknown size")
            return
        if dims[axis]:
            segs.append(Seg(None, dims[axis]))
    out(cp, node, Layout(axis, tuple(segs)))


def _cut(lay: Layout, bounds: list[int]) -> list[tuple[Seg, ...]] | None:
    """Split the segments at element offsets `bounds` (which must be segment boundaries)."""
    edges, offset = {0: 0}, 0
    for i, seg in enumerate(lay.segs):
        offset += seg.size
        edges[offset] = i + 1
    if any(b not in edges for b in bounds):
        return None
    return [lay.segs[edges[lo]:edges[hi]] for lo, hi in zip(bounds, bounds[1:])]


@rule("Split")
def split(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    rank = cp.rank(node.input[0])
    axis = attr(node, "axis", 0) % rank
    if axis != lay.axis:
        for i in range(len(node.output)):
            out(cp, node, lay, i)
        return
    sizes = [cp.shape(o)[axis] if cp.shape(o) else None for o in node.output]
    if None in sizes or not all(isinstance(s, int) for s in sizes):
        cp.block(lay, f"Split {node.name}: output sizes unknown")
        return
    parts = _cut(lay, list(np.cumsum([0] + sizes)))
    if parts is None:
        cp.block(lay, f"Split {node.name} cuts through a channel group")
        return
    cp.act("split", node, 1, axis, lay, extra=[Layout(axis, p) for p in parts])
    for i, p in enumerate(parts):
        out(cp, node, Layout(axis, p), i)


@rule("Slice")
def slice_(cp, node):
    lay = only_input(cp, node)
    if lay is None:
        return
    rank = cp.rank(node.input[0])
    starts, ends = cp.const(node.input[1]), cp.const(node.input[2])
    axes = cp.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(rank)
    steps = cp.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if starts is None or ends is None or axes is None or (len(node.input) > 4 and steps is None):
        cp.block(lay, f"Slice {node.name}: bounds not constant")
        return
    axes = [int(a) % rank for a in np.ravel(axes)]
    if lay.axis not in axes:
        out(cp, node, lay)
        return
    k = axes.index(lay.axis)
    if steps is not None and int(np.ravel(steps)[k]) != 1:
        cp.block(lay, f"Slice {node.name}: strided slice of the channels")
        return
    size = lay.size
    lo, hi = (int(np.ravel(v)[k]) for v in (starts, ends))
    lo, hi = (min(max(v + size if v < 0 else v, 0), size) for v in (lo, hi))
    parts = _cut(lay, [0, lo, hi]) if hi > lo else None
    if parts is None:
        cp.block(lay, f"Slice {node.name} cuts through a channel group")
        return
    cp.act("slice_bounds", node, 1, k, lay, extra=(lo, hi))
    out(cp, node, Layout(lay.axis, parts[1]))


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
