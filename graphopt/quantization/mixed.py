"""Mixed precision: keep the layers most sensitive to quantization in float.

Ranking, one pass: the fully quantized model and the float model run side by side on (a
slice of) the calibration data with every core layer's input and output exposed; the
noise a layer adds itself is its output's relative error power minus the largest of its
inputs' (e_out^2 - max e_in^2), so error inherited from upstream layers is not charged
to it. Layers are kept in float in decreasing order of that; the smallest k whose model
reaches `min_cosine` is found by bisection over k (output cosine is close to monotone in
k). The search costs 2 + log2(N) model evaluations (it used to be N + log2(N) with one
model per left-out layer: 53 onnxruntime sessions and 155 s on all-MiniLM-L6-v2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx

from graphopt.verify.runner import make_session

log = logging.getLogger(__name__)


def output_cosine(model: onnx.ModelProto, feeds: list[dict], reference: list[list[np.ndarray]]) -> float:
    """Smallest per-output cosine similarity vs the float outputs over all feeds."""
    session = make_session(model, optimize=True)
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    got = [session.run(names, {k: v for k, v in f.items() if k in wanted}) for f in feeds]
    worst = 1.0
    for j in range(len(names)):
        a = np.concatenate([r[j].astype(np.float64).ravel() for r in reference])
        b = np.concatenate([g[j].astype(np.float64).ravel() for g in got])
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cos = float(a @ b / denom) if denom else float(np.allclose(a, b))
        worst = min(worst, cos if np.isfinite(cos) else -1.0)
    return worst


def reference_outputs(model: onnx.ModelProto, feeds: list[dict]) -> list[list[np.ndarray]]:
    session = make_session(model, optimize=True)
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return [session.run(names, {k: v for k, v in f.items() if k in wanted}) for f in feeds]


def local_noise(float_model: onnx.ModelProto, quantized: onnx.ModelProto, feeds: list[dict],
                sites: dict[int, tuple[list[str], str]]) -> dict[int, float]:
    """Per site: relative error power its output has beyond the worst of its inputs'."""
    names = sorted({t for ins, out in sites.values() for t in [*ins, out]})
    made = {o for n in quantized.graph.node for o in n.output} | {i.name for i in quantized.graph.input}
    names = [t for t in names if t in made]
    sessions = [make_session(_exposing(m, names), optimize=True) for m in (float_model, quantized)]
    diff = dict.fromkeys(names, 0.0)
    power = dict.fromkeys(names, 0.0)
    for feed in feeds:
        outs = []
        for session in sessions:
            wanted = {i.name for i in session.get_inputs()}
            outs.append(session.run(names, {k: v for k, v in feed.items() if k in wanted}))
        for name, a, b in zip(names, *outs):
            a64 = a.astype(np.float64)
            diff[name] += float(((b - a64) ** 2).sum())
            power[name] += float((a64 ** 2).sum())
    rel = {n: diff[n] / power[n] if power[n] > 0 else 0.0 for n in names}
    return {i: max(rel.get(out, 0.0) - max([rel.get(t, 0.0) for t in ins] or [0.0]), 0.0)
            for i, (ins, out) in sites.items()}


def _exposing(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                            for n in names if n not in present)
    return out


def search(build: Callable[[set[int]], onnx.ModelProto], float_model: onnx.ModelProto,
           feeds: list[dict], candidates: list[int], min_cosine: float,
           labels: dict[int, str], sites: dict[int, tuple[list[str], str]],
           site_model: onnx.ModelProto | None = None) -> tuple[set[int], dict]:
    """(layers to keep in float, report) so that the output cosine reaches `min_cosine`.

    `sites` gives each candidate's (activation inputs, output) tensor names in
    `site_model` (the float graph the quantized one was built from; default float_model)."""
    reference = reference_outputs(float_model, feeds)
    quantized = build(set())
    full = output_cosine(quantized, feeds, reference)
    info = {"cosine_all_quantized": round(full, 6), "min_cosine": min_cosine}
    if full >= min_cosine or not candidates:
        info["kept_float"] = []
        return set(), info
    everything = set(candidates)
    sensitivity = local_noise(site_model or float_model, quantized, feeds,
                              {c: sites[c] for c in candidates})
    order = sorted(candidates, key=lambda c: -sensitivity[c])
    info["sensitivity"] = {labels[c]: round(sensitivity[c], 6) for c in order}
    lo, hi, best = 1, len(order), None
    while lo <= hi:
        k = (lo + hi) // 2
        cos = output_cosine(build(set(order[:k])), feeds, reference)
        if cos >= min_cosine:
            best, hi = (k, cos), k - 1
        else:
            lo = k + 1
    if best is None:
        info["kept_float"] = [labels[c] for c in order]
        info["reached"] = False
        return everything, info
    keep = set(order[:best[0]])
    info.update(kept_float=[labels[c] for c in order[:best[0]]], cosine=round(best[1], 6), reached=True)
    log.info("mixed precision: %d of %d layers kept in float, cosine %.5f", best[0], len(order), best[1])
    return keep, info
