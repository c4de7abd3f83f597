"""Importance of each pruning unit of a coupled group.

Weight criteria score a unit by the norm of every weight slice the group would remove,
producer rows and consumer columns alike (the DepGraph "group norm"):

    l1(u) = sum over weight actions w of sum |w[elements of u]|
    l2(u) = sqrt(sum over weight actions w of sum w[elements of u]^2)

`activation` scores a unit by the mean |x| of the tensors that consumers reduce over
(inputs of the next Conv / Gemm / MatMul), averaged over every other axis and over the
calibration samples, summed over those tensors: a unit whose activations are small
contributes little to the next layer, whatever its weights.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from graphopt.pruning.coupling import Coupling
from graphopt.pruning.layout import Layout, seg_units

log = logging.getLogger(__name__)


def _accumulate(cp: Coupling, scores: dict, layout_segs, per_element: np.ndarray) -> None:
    offset = 0
    for seg in layout_segs:
        if seg.group is not None:
            root = cp.root(seg.group)
            if root in scores:
                units = seg_units(seg, cp.group(root).unit)
                np.add.at(scores[root], units, per_element[offset:offset + seg.size])
        offset += seg.size


def _empty(cp: Coupling, roots) -> dict[int, np.ndarray]:
    return {r: np.zeros(cp.group(r).channels // cp.group(r).unit) for r in roots}


def weight_importance(cp: Coupling, roots, criterion: str) -> dict[int, np.ndarray]:
    scores = _empty(cp, roots)
    for action in cp.actions:
        if action.kind != "slice" or action.role != "weight":
            continue
        value = cp.const(cp.node_list[action.node].input[action.index])
        moved = np.moveaxis(np.asarray(value, dtype=np.float64), action.axis, 0)
        flat = moved.reshape(moved.shape[0], -1)
        per_element = np.abs(flat).sum(1) if criterion == "l1" else (flat ** 2).sum(1)
        _accumulate(cp, scores, action.segs, per_element)
    if criterion == "l2":
        scores = {r: np.sqrt(s) for r, s in scores.items()}
    return scores


def activation_importance(cp: Coupling, roots, feeds_list: list[dict]) -> dict[int, np.ndarray]:
    """Mean |activation| per unit at every consumer input (one onnxruntime run per feed)."""
    from graphopt.verify import make_session, run_model

    watched: dict[str, Layout] = {}
    for name, layout in cp.sink_inputs:
        watched.setdefault(name, layout)
    probe = onnx.ModelProto()
    probe.CopyFrom(cp.model)
    known = {o.name for o in probe.graph.output}
    types = {vi.name: vi for vi in list(probe.graph.value_info) + list(probe.graph.input)}
    for name in watched:
        if name not in known:
            elem = types[name].type.tensor_type.elem_type if name in types else onnx.TensorProto.FLOAT
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    session = make_session(probe)
    scores = _empty(cp, roots)
    names = list(watched)
    for feeds in feeds_list:
        values = run_model(session, feeds, names)
        for name in names:
            layout = watched[name]
            x = np.moveaxis(np.abs(np.asarray(values[name], dtype=np.float64)), layout.axis, 0)
            per_element = x.reshape(x.shape[0], -1).mean(1) / max(len(feeds_list), 1)
            _accumulate(cp, scores, layout.segs, per_element)
    log.debug("activation importance over %d feeds, %d tensors", len(feeds_list), len(names))
    return scores
