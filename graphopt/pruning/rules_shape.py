"""Coupling rules for ops that move, merge, split or cut the tracked axis.

Transpose / Squeeze / Unsqueeze / Reduce move the axis; Flatten and Reshape merge channels
with inner dims (scale x H*W) or split them into (units, unit size) for attention heads,
recording the Reshape size entry to rewrite (a constant, or a constant piece of a Concat
that builds the shape: Unsqueeze(Gather(Shape(x))) of a statically known dim counts);
Concat lays operands end to end (opaque segments for untracked ones); Split and Slice cut
at segment boundaries only.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from graphopt.pruning.layout import Layout, Seg
from graphopt.pruning.rules import attr, block_inputs, only_input, out, rule, tracked

UNKNOWN = np.iinfo(np.int64).min  # a dim of a partly static shape that is only known at run time
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}

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
    src, dst = cp.shape(node.input[0]), _filled(cp, node)
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
    known = [src[a]] + after_src + after_dst
    if not isinstance(dst[a], int) and all(isinstance(d, int) and d > 0 for d in known):
        # a -1 (inferred) entry at the channel axis: the prefix is unchanged, so it is
        # whatever the static tail leaves
        dst = dst[:a] + [int(np.prod(src[a:])) // int(np.prod(after_dst))] + after_dst
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


def _filled(cp, node) -> list | None:
    """Reshape output dims, unknown ones filled from the (partly) static shape input."""
    dst = cp.shape(node.output[0])
    wanted = static_value(cp, node.input[1])
    if dst is None or wanted is None or len(wanted) != len(dst):
        return dst
    src = cp.shape(node.input[0]) or []
    filled = list(dst)
    for i, v in enumerate(np.ravel(wanted)):
        if not isinstance(filled[i], int) or not filled[i]:
            if v > 0:
                filled[i] = int(v)
            elif v == 0 and not attr(node, "allowzero", 0) and i < len(src):
                filled[i] = src[i]
    return filled


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
            if value is None or np.any(value == UNKNOWN):
                return "the channel entry of the shape is computed at run time"
            return ("concat", cp.index_of[id(prod)], i, index - offset, value)
        offset += dims[0]
    return "shape entry not found"


def static_value(cp, name: str, depth: int = 0) -> np.ndarray | None:
    """Value of a small shape tensor known before run time: a constant, or Concat /
    Unsqueeze / Gather of Shape(X); dims of X that are not static read UNKNOWN."""
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
        return np.take(data, idx)
    if node.op_type == "Unsqueeze":
        data, axes = static_value(cp, node.input[0], depth + 1), _axes_of(cp, node)
        return None if data is None or axes is None else np.expand_dims(data, tuple(axes))
    if node.op_type == "Concat" and attr(node, "axis") in (0, -1):
        pieces = [static_value(cp, n, depth + 1) for n in node.input]
        if all(p is not None and np.ndim(p) == 1 for p in pieces):
            return np.concatenate(pieces).astype(np.int64)
    return None


def _partial_shape(dims) -> np.ndarray | None:
    """Shape with unknown dims as UNKNOWN (Gather of a known dim still resolves)."""
    if dims is None:
        return None
    return np.array([d if isinstance(d, int) else UNKNOWN for d in dims], np.int64)


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
        for bound in np.cumsum(sizes)[:-1]:
            cp.request_cut(lay, int(bound))
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
        for bound in (lo, hi):
            cp.request_cut(lay, bound)
        cp.block(lay, f"Slice {node.name} cuts through a channel group")
        return
    cp.act("slice_bounds", node, 1, k, lay, extra=(lo, hi))
    out(cp, node, Layout(lay.axis, parts[1]))
