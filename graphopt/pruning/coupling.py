"""Channel-coupling analysis: which dimensions of a graph must be pruned together.

Sources are the producers whose output channels can be chosen freely: Conv /
ConvTranspose filters (group=1) and the output columns of Gemm / MatMul with a constant
weight. Each source starts a group in a union-find (networkx.utils.UnionFind); its
output tensor gets a `Layout` (layout.py). Walking the graph in topological order, each
op's rule (rules.py) either carries layouts to its outputs (activations, BN, pooling,
Resize, depthwise Conv, Transpose, Flatten/Reshape, Concat, Split, Slice, batch axes of
MatMul), unions groups whose channels meet element-wise (residual Add/Sub/Mul, Q.K^T,
attention.V), or absorbs them (the reduction axis of Conv/Gemm/MatMul weights). Every
constant, attribute or shape entry that must shrink is recorded as an `Action` on the
group. Whatever the rules cannot prove safe (unknown op, graph output, Shape of a tracked
tensor, a dynamic Reshape size, a normalization across channels) blocks the group with a
reason; blocked groups are never pruned.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from networkx.utils import UnionFind

from graphopt.ir import ConstantView, opset_version
from graphopt.ir.subgraphs import subgraph_reads
from graphopt.pruning.layout import Layout, Seg

log = logging.getLogger(__name__)


@dataclass
class Action:
    """One edit the rewrite applies once kept units are known.

    kind: "slice" (constant input `index` of `node` along `axis`), "group" (Conv group
    attribute = kept elements), "shape" (entry `axis` of the shape-like constant input
    `index` = kept elements), "split" / "slice_bounds" (extra holds per-output layouts).
    role ("weight", "bias", "scale", "const") drives importance and zeroing.
    """

    kind: str
    node: int
    index: int
    axis: int
    segs: tuple[Seg, ...]
    role: str = "const"
    extra: object = None


@dataclass
class Group:
    channels: int
    unit: int = 1
    sources: list[str] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    blocked: list[str] = field(default_factory=list)


class Coupling:
    """Result of `analyze`: groups (by root id), actions and the layouts of tensors."""

    def __init__(self, model: onnx.ModelProto, partitions: dict[str, set[int]] | None = None):
        self.model = model
        self.partitions = partitions or {}  # source label -> channel offsets to cut at
        self.cut_requests: dict[str, set[int]] = {}
        self.graph = model.graph
        self.opset = opset_version(model)
        self.consts = ConstantView(self.graph)
        self.shapes = _shapes(model)
        self.layouts: dict[str, Layout] = {}
        self.uf = UnionFind()
        self._groups: dict[int, Group] = {}
        self.actions: list[Action] = []
        self.sink_inputs: list[tuple[str, Layout]] = []
        self.node_list = list(self.graph.node)
        self.index_of = {id(n): i for i, n in enumerate(self.node_list)}
        self.producer = {o: n for n in self.node_list for o in n.output if o}

    # --- groups -----------------------------------------------------------------------
    def new_group(self, channels: int, node: onnx.NodeProto, part: str = "") -> int:
        gid = len(self._groups)
        self._groups[gid] = Group(channels, sources=[self.label(node) + part], nodes={self.label(node)})
        self.uf[gid]  # noqa: B018 - registers the element
        return gid

    def root(self, gid: int) -> int:
        return self.uf[gid]

    def group(self, gid: int) -> Group:
        return self._groups[self.root(gid)]

    def groups(self) -> dict[int, Group]:
        return {gid: g for gid, g in self._groups.items() if self.root(gid) == gid}

    def union(self, a: int, b: int, why: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        ga, gb = self._groups[ra], self._groups[rb]
        self.uf.union(ra, rb)
        keep = self.root(ra)
        merged, other = (ga, gb) if keep == ra else (gb, ga)
        if merged.channels != other.channels:
            merged.blocked.append(f"{why}: couples {ga.channels} with {gb.channels} channels")
        merged.unit = math.lcm(merged.unit, other.unit)
        merged.sources += other.sources
        merged.nodes |= other.nodes
        merged.blocked += other.blocked

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for seg in layout.segs:
            if seg.group is not None and reason not in self.group(seg.group).blocked:
                self.group(seg.group).blocked.append(reason)

    def request_cut(self, layout: Layout, offset: int) -> None:
        """A Split/Slice cuts a single-source group at element `offset` of `layout`:
        remember it, so the next analysis starts that source as several groups
        (a fused Q/K/V projection, a GLU chunk)."""
        start = 0
        for seg in layout.segs:
            if start < offset < start + seg.size and seg.group is not None:
                group = self.group(seg.group)
                channel = (offset - start) / seg.scale
                if len(group.sources) == 1 and channel.denominator == 1:
                    label, _, part = group.sources[0].partition("[")
                    base = int(part.split(":")[0]) if part else 0  # offset of this part
                    self.cut_requests.setdefault(label, set()).add(int(channel) + base)
            start += seg.size

    def touch(self, layout: Layout, node: onnx.NodeProto) -> None:
        for seg in layout.segs:
            if seg.group is not None:
                self.group(seg.group).nodes.add(self.label(node))

    def need_unit(self, seg: Seg) -> None:
        """The group must prune in units that never split an element of `seg`."""
        if seg.group is not None:
            g = self.group(seg.group)
            g.unit = math.lcm(g.unit, seg.scale.denominator)

    def unite(self, a: Layout, b: Layout, why: str) -> bool:
        """Element-wise coupling of two layouts on the same axis; False when impossible."""
        if len(a.segs) != len(b.segs) or any(
                x.size != y.size or (x.group is None) != (y.group is None)
                or (x.group is not None and x.scale != y.scale) for x, y in zip(a.segs, b.segs)):
            self.block(a, f"{why}: operands laid out differently")
            self.block(b, f"{why}: operands laid out differently")
            return False
        for x, y in zip(a.segs, b.segs):
            if x.group is not None:
                self.union(x.group, y.group, why)
        return True

    # --- actions ----------------------------------------------------------------------
    def act(self, kind: str, node: onnx.NodeProto, index: int, axis: int, layout: Layout,
            role: str = "const", extra=None) -> None:
        self.actions.append(Action(kind, self.index_of[id(node)], index, axis, layout.segs, role, extra))
        self.touch(layout, node)

    def label(self, node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}#{self.index_of[id(node)]}"

    # --- shapes and constants ---------------------------------------------------------
    def shape(self, name: str) -> list | None:
        if name in self.shapes:
            return self.shapes[name]
        value = self.consts.get(name)
        return list(value.shape) if value is not None else None

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor name -> dims (int, symbolic name, or None) from inferred value_info."""
    out = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else
                            (d.dim_param or None) for d in t.shape.dim]
    return out


def analyze(model: onnx.ModelProto, rounds: int = 3) -> Coupling:
    """Run the rules; when a Split/Slice cut a single-source group, restart with that
    source partitioned at the cut (a few rounds at most)."""
    partitions: dict[str, set[int]] = {}
    for _ in range(rounds):
        cp = _analyze_once(model, partitions)
        new = {k: v - partitions.get(k, set()) for k, v in cp.cut_requests.items()}
        if not any(new.values()):
            break
        for label, cuts in new.items():
            partitions.setdefault(label, set()).update(cuts)
    return cp


def _analyze_once(model: onnx.ModelProto, partitions: dict[str, set[int]]) -> Coupling:
    from graphopt.pruning import rules_linear, rules_shape  # noqa: F401 - register their rules
    from graphopt.pruning.rules import RULES, block_inputs

    cp = Coupling(model, partitions)
    for node in cp.node_list:
        implicit = _implicit_reads(node)
        for name in implicit:
            cp.block(cp.layouts.get(name), f"read inside a subgraph of {node.op_type} {node.name}")
        if implicit or node.domain not in ("", "ai.onnx"):
            block_inputs(cp, node, f"{node.op_type} {node.name} is not analyzed")
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            block_inputs(cp, node, f"{node.op_type} {node.name} reads the channels")
        else:
            try:
                rule(cp, node)
            except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as err:
                # unknown ranks / shapes make a rule inapplicable: block, never raise
                log.debug("rule %s on %s failed: %r", node.op_type, node.name, err)
                for name in node.output:
                    cp.layouts.pop(name, None)
                block_inputs(cp, node, f"{node.op_type} {cp.label(node)}: cannot analyze ({err})")
    for out in model.graph.output:
        cp.block(cp.layouts.get(out.name), f"reaches graph output {out.name}")
    log.debug("coupling: %d groups, %d actions", len(cp.groups()), len(cp.actions))
    return cp


def _implicit_reads(node: onnx.NodeProto) -> set[str]:
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return set()
    return subgraph_reads(node) | {n for n in node.input if n}
