"""Per-op coupling rules: how each op carries, couples or absorbs tracked channels.

A rule reads the layouts of its inputs from `cp.layouts`, records actions, sets the
layouts of its outputs, and blocks (with a reason) whatever it cannot handle exactly.
See coupling.py for the overall walk and layout.py for the element <-> unit mapping.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.pruning.coupling import Coupling
from graphopt.pruning.layout import Layout, Seg

UNARY = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
         "Selu", "Celu", "Gelu", "Softplus", "Softsign", "Erf", "Exp", "Log", "Abs", "Neg",
         "Sqrt", "Reciprocal", "Identity", "Dropout", "Cast", "Floor", "Ceil", "Round", "Sign",
         "Mish", "ThresholdedRelu", "Sin", "Cos", "Shrink", "IsNaN", "IsInf", "Not"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu"}
POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}

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
    """A group for the output channels of `node` (several when a later Split cuts them)."""
    bounds = sorted({0, channels} | {c for c in cp.partitions.get(cp.label(node), ()) if 0 < c < channels})
    segs = []
    for lo, hi in zip(bounds, bounds[1:]):
        part = f"[{lo}:{hi}]" if len(bounds) > 2 else ""
        segs.append(Seg(cp.new_group(hi - lo, node, part), hi - lo))
    layout = Layout(out_axis, tuple(segs))
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
