"""Choosing what to prune: candidate groups, unit counts, and the kept units.

Per group with U units of B channels (B = head size for attention heads, else 1):

    uniform: keep k = round(U * (1 - ratio))
    global:  scores are divided by their group's mean (so groups compare), the
             ratio * sum(U) lowest-scoring units over all groups are pruned
then  k >= ceil(min_channels / B),  k >= 1,  k * B a multiple of round_to (rounded up,
never above U).  The k highest-scoring units are kept, in their original order.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphopt.ir import infer_shapes
from graphopt.ir.rewrite import topological_order
from graphopt.pruning.coupling import Coupling, analyze
from graphopt.pruning.importance import activation_importance, weight_importance

log = logging.getLogger(__name__)


@dataclass
class Plan:
    coupling: Coupling
    kept_units: dict[int, np.ndarray] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    """Sorted, shape-inferred copy of `model`, or a reason it cannot be analyzed.

    The lossless `cleanup` pass runs first: exporters often write weights as
    Transpose(initializer) or Constant nodes, and shapes as Shape arithmetic; folded,
    they become constants the analysis can slice.
    """
    from graphopt.passes import PassContext, create_pass

    work = onnx.ModelProto()
    work.CopyFrom(model)
    order = topological_order(work.graph)
    if order is None:
        return None, "graph has a cycle"
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in order]
    del work.graph.node[:]
    work.graph.node.extend(nodes)  # sorted before cleanup: its dead-code walk assumes order
    try:
        work = create_pass("cleanup").run(work, PassContext()).model
        return infer_shapes(work), None
    except Exception as err:  # an un-inferable graph is skipped, not broken
        return None, f"shape inference failed: {str(err).splitlines()[0][:200]}"


def _excluded(group, patterns: list[str]) -> str | None:
    for pattern in patterns:
        for name in sorted(group.nodes):
            if name == pattern or re.fullmatch(pattern, name):
                return f"excluded by {pattern!r} ({name})"
    return None


def make_plan(model: onnx.ModelProto, options, feeds_list=None, skip_sites=frozenset()) -> Plan:
    cp = analyze(model)
    plan = Plan(cp)
    candidates = []
    for root, group in sorted(cp.groups().items()):
        site = f"group:{group.sources[0]}"
        reason = ("; ".join(sorted(set(group.blocked))) or _excluded(group, options.exclude)
                  or (f"skipped site {site}" if site in skip_sites else None)
                  or ("fewer than 2 units" if group.channels // group.unit < 2 else None)
                  or (f"unit of {group.unit} channels does not divide {group.channels}"
                      if group.channels % group.unit else None))
        if reason:
            plan.notes.append(f"{site} ({group.channels} channels) not pruned: {reason}")
        else:
            candidates.append(root)
    if not candidates:
        return plan
    if options.criterion == "activation":
        if not feeds_list:
            plan.notes.append("criterion=activation needs calibration data; none given, using l2")
            scores = weight_importance(cp, candidates, "l2")
        else:
            scores = activation_importance(cp, candidates, feeds_list)
    else:
        scores = weight_importance(cp, candidates, options.criterion)
    counts = _unit_counts(cp, scores, options)
    for root in candidates:
        group, k = cp.group(root), counts[root]
        units = len(scores[root])
        order = np.argsort(-scores[root], kind="stable")[:k]
        if k < units:
            plan.kept_units[root] = np.sort(order)
        plan.rows.append({"group": f"group:{group.sources[0]}", "sources": list(group.sources),
                          "unit_channels": group.unit, "channels_before": group.channels,
                          "channels_after": k * group.unit})
    return plan


def _unit_counts(cp: Coupling, scores: dict[int, np.ndarray], options) -> dict[int, int]:
    if options.scope == "global":
        pooled = [(s / (s.mean() or 1.0), root) for root, s in scores.items()]
        flat = np.concatenate([p for p, _ in pooled])
        owner = np.concatenate([np.full(len(p), root) for p, root in pooled])
        drop = owner[np.argsort(flat, kind="stable")[:int(round(options.ratio * len(flat)))]]
        raw = {root: len(s) - int(np.sum(drop == root)) for root, s in scores.items()}
    else:
        raw = {root: int(round(len(s) * (1 - options.ratio))) for root, s in scores.items()}
    return {root: _constrain(k, len(scores[root]), cp.group(root).unit, options) for root, k in raw.items()}


def _constrain(k: int, units: int, unit: int, options) -> int:
    k = max(k, 1, math.ceil(options.min_channels / unit))
    step = options.round_to // math.gcd(options.round_to, unit) if options.round_to > 1 else 1
    k = math.ceil(k / step) * step
    return min(k, units)
