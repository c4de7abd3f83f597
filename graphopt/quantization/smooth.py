"""SmoothQuant: move per-channel activation outliers into the weights before quantizing.

Transformer activations feeding a MatMul (LayerNorm outputs, GELU outputs) carry a few
channels with 10-40x the magnitude of the rest; one per-tensor activation scale then
spends its 256 levels on those channels and the others lose most of their precision
(6-11 % relative error on all-MiniLM-L6-v2's FFN inputs). For X @ W, with a per-input-
channel factor s_j,

    X @ W = (X diag(1/s)) @ (diag(s) W)

hands part of the spread to the weights, whose scales are per output channel anyway
(Xiao et al., SmoothQuant, 2023). The factor used here only shrinks the outlier channels:

    s_j = max(1, (amax_j / median_k amax_k) ^ alpha)

SmoothQuant's own s_j = amax_j^alpha / wmax_j^(1-alpha) also grows channels whose weight
rows are small, which then dominate their weight columns' int8 scales: on MiniLM it gave
held-out cosine 0.991 at alpha 0.5 and 0.968 at 0.4, against 0.996 for the form above
(no smoothing: 0.987). The float model is unchanged up to round-off. The division is an
explicit Mul on the quantized branch only (other readers of X, e.g. the residual Add,
still read X), which onnxruntime runs as one cheap elementwise op before the Q.

Only tensors produced by float ops (LayerNorm, GELU: no integer kernel, so the Mul costs
no fusion) and whose channel spread max_j(amax_j) / median_j(amax_j) reaches `min_ratio`
are smoothed; all constant-weight MatMul / Gemm readers of one tensor share one factor.
Per-channel maxima come from one onnxruntime run over the calibration feeds (memory:
one vector per tensor).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.ir.constants import ConstantView
from graphopt.quantization.placement import Plan, node_label
from graphopt.quantization.rewrite import remove_initializers

log = logging.getLogger(__name__)

MIN_RATIO = 4.0   # channel spread below which per-tensor scales already fit well
EPS = 1e-5


def _weight_layout(node: onnx.NodeProto, w: np.ndarray | None) -> int | None:
    """Axis of the constant weight that runs over the input channels (None: not smoothable)."""
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    if node.op_type == "MatMul":
        return 0
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        return 1 if attrs.get("transB") else 0
    return None


def factors(amax: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    """Per-channel s_j = max(1, (amax_j / median amax)^alpha): only outlier channels shrink.

    `wmax` (the weight rows' max |w|) is not used: see the module docstring."""
    a = np.maximum(np.asarray(amax, np.float64), EPS)
    return np.maximum(1.0, (a / np.median(a)) ** alpha).astype(np.float32)


def candidates(model: onnx.ModelProto, plan: Plan) -> dict[str, list[int]]:
    """Activation tensor -> quantized MatMul/Gemm nodes that read it with a constant weight."""
    constants = ConstantView(model.graph)
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    integer = set(plan.kinds) | set(plan.folds)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, kind in sorted(plan.kinds.items()):
        node = model.graph.node[i]
        if kind != "core" or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        if producer.get(node.input[0]) in integer:
            continue  # a float Mul there would break an integer chain (CNN: pool -> Flatten -> Gemm)
        if _weight_layout(node, constants.get(node.input[1])) is not None:
            groups[node.input[0]].append(i)
    return dict(groups)


def channel_maxima(model: onnx.ModelProto, feeds: list[dict], tensors: list[str]) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor over all feeds (one onnxruntime run,
    reduced inside the graph)."""
    from graphopt.calibration.collector import channel_abs_max

    return channel_abs_max(model, feeds, tensors)


def apply_smoothing(model: onnx.ModelProto, plan: Plan, feeds: list[dict], alpha: float,
                    min_ratio: float = MIN_RATIO) -> tuple[dict[int, int], dict]:
    """Smooth `model` in place; returns (old node index -> new index, stats)."""
    groups = candidates(model, plan)
    graph = model.graph
    constants = ConstantView(graph)
    amax = channel_maxima(model, feeds, list(groups))
    types = {v.name: v for v in list(graph.value_info) + list(graph.input)}
    taken = ({t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
             | {n.name for n in graph.node} | {i.name for i in graph.input})
    inserted: dict[int, onnx.NodeProto] = {}   # index of the first reader -> Mul node
    replaced: set[str] = set()
    report: dict[str, dict] = {}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    for tensor, readers in groups.items():
        a = amax.get(tensor)
        if a is None or a.size < 2 or not np.isfinite(a).all():
            continue
        ratio = float(a.max() / max(float(np.median(a)), EPS))
        if ratio < min_ratio:
            continue
        weights = []
        for i in readers:
            node = graph.node[i]
            w = constants.get(node.input[1]).astype(np.float32)
            axis = _weight_layout(node, w)
            if w.shape[axis] != a.size:
                weights = []
                break
            weights.append((i, w, axis))
        if not weights:
            continue
        wmax = np.max([np.abs(w).max(axis=1 - axis) for _, w, axis in weights], axis=0)
        s = factors(a, wmax, alpha)
        inv = fresh(f"{tensor}_smooth_scale")
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        out = fresh(f"{tensor}_smoothed")
        mul = helper.make_node("Mul", [tensor, inv], [out], name=fresh(f"{tensor}_Smooth"))
        if tensor in types:
            info = onnx.ValueInfoProto()
            info.CopyFrom(types[tensor])
            info.name = out
            graph.value_info.append(info)
        for i, w, axis in weights:
            node = graph.node[i]
            shaped = s[:, None] if axis == 0 else s[None, :]
            wname = fresh(f"{node.input[1]}_smoothed")
            graph.initializer.append(numpy_helper.from_array((w * shaped).astype(np.float32), wname))
            replaced.add(node.input[1])
            node.input[1] = wname
            node.input[0] = out
        inserted[min(i for i, _, _ in weights)] = mul
        report[tensor] = {"channel_spread": round(ratio, 1), "readers": [node_label(graph.node[i], i) for i in readers]}
    if not inserted:
        return {i: i for i in range(len(graph.node))}, {}
    nodes, index_map = [], {}
    for i, node in enumerate(graph.node):
        if i in inserted:
            nodes.append(inserted[i])
        index_map[i] = len(nodes)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {n for node in graph.node for n in node.input}
    remove_initializers(graph, lambda t: t.name in replaced and t.name not in used)
    log.info("smoothing: %d activation tensors (alpha %.2f)", len(report), alpha)
    return index_map, {"alpha": alpha, "tensors": report}
