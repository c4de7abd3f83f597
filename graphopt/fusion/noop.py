"""No-op removal: nodes whose output equals their first input.

* Pad whose pads are all zero; Slice from 0 to the end with step 1 on every axis it names;
* Reshape / Flatten / Squeeze / Unsqueeze / Expand whose input and output static shapes
  are equal, and Expand to a shape of ones no longer than the input's rank;
* Transpose with the identity permutation; Cast to the type it already has;
  Concat of a single input;
* x * 1, x / 1, x + 0, x - 0 with a single-element constant whose rank does not exceed
  x's (so broadcasting cannot grow the output) and whose dtype matches.

Each is removed and its readers read the input; a node writing a graph output is removed
only when its input's producer can take the name over.
"""

from __future__ import annotations

import numpy as np

from graphopt.fusion.graph import FusionGraph, attr, scalar
from graphopt.fusion.rule import Match, Rule

INT_END = 2**31 - 1
NEUTRAL = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0}


def _static(shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _same_static_shape(g: FusionGraph, node) -> bool:
    a, b = g.shape(node.input[0]), g.shape(node.output[0])
    return _static(a) and _static(b) and tuple(a) == tuple(b)


def _is_noop(g: FusionGraph, node) -> bool:
    op = node.op_type
    if op == "Pad":
        pads = g.value(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "pads")
        return pads is not None and not np.any(np.asarray(pads))
    if op == "Slice":
        return _full_slice(g, node)
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return _same_static_shape(g, node)
    if op == "Expand":
        shape = g.value(node.input[1])
        rank = g.rank(node.input[0])
        ones = shape is not None and rank is not None and shape.size <= rank and np.all(shape == 1)
        return bool(ones) or _same_static_shape(g, node)
    if op == "Transpose":
        perm = attr(node, "perm")
        return perm is not None and list(perm) == list(range(len(perm)))
    if op == "Cast":
        return g.dtype(node.input[0]) is not None and g.dtype(node.input[0]) == attr(node, "to")
    if op == "Concat":
        return len(node.input) == 1
    return _neutral_arith(g, node)


def _full_slice(g: FusionGraph, node) -> bool:
    if len(node.input) < 3:  # opset < 10: attributes
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes, steps = attr(node, "axes"), None
    else:
        starts, ends = g.value(node.input[1]), g.value(node.input[2])
        axes = g.value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = g.value(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if (len(node.input) > 3 and node.input[3] and axes is None) or (len(node.input) > 4 and node.input[4] and steps is None):
            return False
    if starts is None or ends is None:
        return False
    starts, ends = np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)
    shape = g.shape(node.input[0])
    axes = list(range(len(starts))) if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    for i, axis in enumerate(axes):
        step = 1 if steps is None else int(np.asarray(steps).reshape(-1)[i])
        dim = None
        if shape is not None and -len(shape) <= axis < len(shape):
            dim = shape[axis]
        if step != 1 or int(starts[i]) != 0:
            return False
        if not (int(ends[i]) >= INT_END or (dim is not None and int(ends[i]) >= dim)):
            return False
    return True


def _neutral_arith(g: FusionGraph, node) -> bool:
    if node.op_type not in NEUTRAL or len(node.input) != 2 or not g.is_const(node.input[1]):
        return False
    c = g.value(node.input[1])
    rank = g.rank(node.input[0])
    if scalar(c) != NEUTRAL[node.op_type] or rank is None or c.ndim > rank:
        return False
    return g.dtype(node.input[0]) == g.dtype(node.input[1])


def match_noop(g: FusionGraph, node) -> Match | None:
    if not node.input or not node.input[0] or len([o for o in node.output if o]) != 1:
        return None
    return Match([node]) if _is_noop(g, node) else None


def check_noop(g: FusionGraph, m: Match) -> str | None:
    reason = g.bypass_reason(m.anchor, m.anchor.input[0])
    return f"no-op {m.anchor.op_type} {m.anchor.name!r} kept: {reason}" if reason else None


def rewrite_noop(g: FusionGraph, m: Match) -> None:
    g.bypass(m.anchor, m.anchor.input[0])


RULES = [
    Rule("noop_removed", ("Pad", "Slice", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Transpose",
                          "Cast", "Concat", "Mul", "Div", "Add", "Sub"),
         match_noop, check_noop, rewrite_noop, "no-op Pad/Slice/Expand/Reshape/Transpose/Cast/arithmetic removed"),
]
