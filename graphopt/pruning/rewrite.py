"""Apply a pruning plan: slice every constant, attribute and shape entry of each group.

For every action the kept element indices along its axis are computed from the layout
(layout.kept_elements), so a weight row, its bias, the BN statistics, the next layer's
weight columns, a Reshape size and a Split size all shrink by the same channels.
`zero_pruned` writes zeros into the producer-side parameters instead of removing them:
the masked model the exactness tests compare against (no speed-up, same outputs).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.pruning.coupling import Action, Coupling
from graphopt.pruning.layout import kept_elements

log = logging.getLogger(__name__)
ZEROED_ROLES = ("weight", "bias", "scale")


class Rewriter:
    def __init__(self, cp: Coupling, kept_units: dict[int, np.ndarray]):
        self.cp = cp
        self.kept_units = kept_units
        self.units = {r: cp.group(r).unit for r in kept_units}
        self.values: dict[str, np.ndarray] = {}  # constants this rewrite created
        self.taken = {t.name for t in cp.graph.initializer} | {o for n in cp.node_list for o in n.output}

    def kept(self, segs) -> np.ndarray:
        return kept_elements(segs, self.cp.root, self.units, self.kept_units)

    def new_constant(self, base: str, value: np.ndarray) -> str:
        name, k = f"{base}_pruned", 1
        while name in self.taken:
            k += 1
            name = f"{base}_pruned{k}"
        self.taken.add(name)
        self.values[name] = value
        self.cp.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def replace_input(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        node.input[index] = self.new_constant(node.input[index] or f"{node.name}_in{index}", value)

    def value(self, name: str) -> np.ndarray:
        return self.values[name] if name in self.values else self.cp.const(name)

    def touches_pruned(self, segs) -> bool:
        return any(s.group is not None and self.cp.root(s.group) in self.kept_units for s in segs)

    def apply(self, action: Action) -> None:
        if not self.touches_pruned(action.segs) and action.kind not in ("split", "slice_bounds"):
            return
        node = self.cp.node_list[action.node]
        getattr(self, f"_{action.kind}")(node, action)

    def _slice(self, node, action):
        value = self.value(node.input[action.index])
        self.replace_input(node, action.index, np.take(value, self.kept(action.segs), axis=action.axis))

    def _group(self, node, action):
        for a in node.attribute:
            if a.name == "group":
                a.i = len(self.kept(action.segs)) // (action.extra or 1)

    def _shape(self, node, action):
        size = len(self.kept(action.segs))
        where = action.extra or ("const", node.input[action.index], action.axis)
        if where[0] == "const":
            value = np.array(self.value(where[1]), copy=True)
            if value.reshape(-1)[where[2]] > 0:  # 0 copies the input dim, -1 is inferred
                value.reshape(-1)[where[2]] = size
                self.replace_input(node, action.index, value)
            return
        concat = self.cp.node_list[where[1]]
        piece = np.array(where[4], dtype=np.int64, copy=True).reshape(-1)
        if piece.reshape(-1)[where[3]] > 0:
            piece.reshape(-1)[where[3]] = size
            self.replace_input(concat, where[2], piece)

    def _split(self, node, action):
        sizes = np.array([len(self.kept(p.segs)) for p in action.extra], dtype=np.int64)
        for a in list(node.attribute):
            if a.name == "num_outputs":
                node.attribute.remove(a)
            if a.name == "split":
                del a.ints[:]
                a.ints.extend(int(s) for s in sizes)
                return
        if self.cp.opset < 13:
            node.attribute.append(onnx.helper.make_attribute("split", [int(s) for s in sizes]))
        elif len(node.input) > 1 and node.input[1]:
            self.replace_input(node, 1, sizes)
        else:
            if len(node.input) < 2:
                node.input.append("")
            node.input[1] = self.new_constant(f"{node.name or 'split'}_sizes", sizes)

    def _slice_bounds(self, node, action):
        lo, hi = action.extra
        kept = self.kept(action.segs)
        new = (int(np.sum(kept < lo)), int(np.sum(kept < hi)))
        for index, bound in zip((1, 2), new):
            value = np.array(self.value(node.input[index]), copy=True)
            value.reshape(-1)[action.axis] = bound
            self.replace_input(node, index, value)


def apply_plan(cp: Coupling, kept_units: dict[int, np.ndarray]) -> None:
    """Rewrite `cp.model` in place (its graph nodes are `cp.node_list`)."""
    writer = Rewriter(cp, kept_units)
    for action in cp.actions:
        writer.apply(action)


def zero_pruned(cp: Coupling, kept_units: dict[int, np.ndarray]) -> None:
    """Zero the producer-side parameters of the pruned units in `cp.model`, in place."""
    writer = Rewriter(cp, kept_units)
    for action in cp.actions:
        if action.kind != "slice" or action.role not in ZEROED_ROLES or not writer.touches_pruned(action.segs):
            continue
        node = cp.node_list[action.node]
        value = np.array(writer.value(node.input[action.index]), copy=True)
        size = value.shape[action.axis]
        mask = np.ones(size, bool)
        mask[writer.kept(action.segs)] = False
        index = [slice(None)] * value.ndim
        index[action.axis] = mask
        value[tuple(index)] = 0
        writer.replace_input(node, action.index, value)
