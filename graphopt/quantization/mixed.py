"""Mixed precision: keep the layers most sensitive to quantization in float.

Sensitivity of a core layer L = 1 - cosine(model with only L quantized, float model) on
(a slice of) the calibration data: the error L alone injects at the model output. Layers
are kept in float in decreasing sensitivity; the smallest k whose model reaches
`min_cosine` is found by bisection over k (output cosine is close to monotone in k),
so the search costs N + log2(N) model evaluations, all with the statistics of the one
calibration run.
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


def search(build: Callable[[set[int]], onnx.ModelProto], float_model: onnx.ModelProto,
           feeds: list[dict], candidates: list[int], min_cosine: float,
           labels: dict[int, str]) -> tuple[set[int], dict]:
    """(layers to keep in float, report) so that the output cosine reaches `min_cosine`."""
    reference = reference_outputs(float_model, feeds)
    full = output_cosine(build(set()), feeds, reference)
    info = {"cosine_all_quantized": round(full, 6), "min_cosine": min_cosine}
    if full >= min_cosine or not candidates:
        info["kept_float"] = []
        return set(), info
    everything = set(candidates)
    sensitivity = {c: 1.0 - output_cosine(build(everything - {c}), feeds, reference) for c in candidates}
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
