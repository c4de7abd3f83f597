"""Comparing a candidate model's outputs with a reference's.

Metrics per output over all samples: max/mean absolute error, error relative to the
reference's max |value|, cosine similarity, SNR in dB (10 log10 of signal power over error
power), top-1 agreement along the last axis for class-score outputs, and NaN/Inf counts
checked separately (a NaN is never "close").

Lossless passes use `allclose_relative`: |a - b| <= rtol * max|ref| + atol per output,
i.e. error relative to the output's own scale, so large-magnitude outputs are not held to
an absolute 1e-7 they cannot meet in float32.
"""

from __future__ import annotations

import numpy as np

LOSSLESS_RTOL = 1e-5
LOSSLESS_ATOL = 1e-7


def output_metrics(refs: list[np.ndarray], cands: list[np.ndarray]) -> dict:
    ref = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in refs])
    cand = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1) for c in cands])
    metrics = {"nan_or_inf_reference": int((~np.isfinite(ref)).sum()),
               "nan_or_inf_candidate": int((~np.isfinite(cand)).sum())}
    finite = np.isfinite(ref) & np.isfinite(cand)
    ref_f, cand_f = ref[finite], cand[finite]
    diff = np.abs(ref_f - cand_f)
    scale = float(np.max(np.abs(ref_f))) if ref_f.size else 0.0
    metrics.update({
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "relative_error": float(diff.max() / scale) if diff.size and scale > 0 else 0.0,
        "cosine": _cosine(ref_f, cand_f),
        "snr_db": _snr_db(ref_f, cand_f),
    })
    top1 = _top1_agreement(refs, cands)
    if top1 is not None:
        metrics["top1_agreement"] = top1
    return metrics


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def _snr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * np.log10(signal / noise))


def _top1_agreement(refs, cands) -> float | None:
    shapes = {np.shape(r) for r in refs}
    if any(len(s) < 2 or s[-1] < 2 for s in shapes) or not np.issubdtype(np.asarray(refs[0]).dtype, np.floating):
        return None
    agree = total = 0
    for r, c in zip(refs, cands):
        if np.shape(r) != np.shape(c):
            return None
        a, b = np.argmax(r, axis=-1), np.argmax(c, axis=-1)
        agree += int((a == b).sum())
        total += a.size
    return agree / total if total else None


def allclose_relative(refs: list[np.ndarray], cands: list[np.ndarray],
                      rtol: float = LOSSLESS_RTOL, atol: float = LOSSLESS_ATOL) -> tuple[bool, float]:
    """(within tolerance, the smallest rtol that would have passed)."""
    ref = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in refs])
    cand = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1) for c in cands])
    if ref.shape != cand.shape:
        return False, float("inf")
    same_nonfinite = np.array_equal(~np.isfinite(ref), ~np.isfinite(cand)) and np.array_equal(
        ref[~np.isfinite(ref)], cand[~np.isfinite(cand)], equal_nan=True)
    if not same_nonfinite:
        return False, float("inf")
    finite = np.isfinite(ref)
    if not finite.any():
        return True, 0.0
    scale = float(np.max(np.abs(ref[finite])))
    err = float(np.max(np.abs(ref[finite] - cand[finite])))
    needed = max(err - atol, 0.0) / scale if scale > 0 else (0.0 if err <= atol else float("inf"))
    return err <= rtol * scale + atol, needed


def compare_outputs(ref_runs: list[dict[str, np.ndarray]], cand_runs: list[dict[str, np.ndarray]],
                    lossless: bool = False, rtol: float = LOSSLESS_RTOL,
                    atol: float = LOSSLESS_ATOL) -> dict:
    """Per-output metrics; with `lossless`, also the relative-tolerance verdict."""
    outputs = {}
    passed = True
    for name in ref_runs[0] if ref_runs else {}:
        refs = [run[name] for run in ref_runs]
        if any(name not in run for run in cand_runs):
            outputs[name] = {"missing": True}
            passed = False
            continue
        cands = [run[name] for run in cand_runs]
        if any(np.shape(r) != np.shape(c) for r, c in zip(refs, cands)):
            outputs[name] = {"shape_mismatch": [list(np.shape(refs[0])), list(np.shape(cands[0]))]}
            passed = False
            continue
        if not np.issubdtype(np.asarray(refs[0]).dtype, np.number) and not np.asarray(refs[0]).dtype == bool:
            equal = all(np.array_equal(r, c) for r, c in zip(refs, cands))
            outputs[name] = {"exact_match": equal}
            passed &= equal
            continue
        metrics = output_metrics(refs, cands)
        if lossless:
            ok, needed = allclose_relative(refs, cands, rtol, atol)
            metrics["within_tolerance"] = ok
            metrics["rtol_needed"] = needed
            passed &= ok
        outputs[name] = metrics
    return {"passed": passed, "outputs": outputs}


def summarize(outputs: dict) -> dict:
    """Worst case over outputs: max error, min cosine, min SNR, min top-1."""
    rows = [m for m in outputs.values() if "cosine" in m]
    if not rows:
        return {}
    summary = {"max_abs_error": max(m["max_abs_error"] for m in rows),
               "cosine": min(m["cosine"] for m in rows),
               "snr_db": min(m["snr_db"] for m in rows)}
    top1 = [m["top1_agreement"] for m in rows if "top1_agreement" in m]
    if top1:
        summary["top1_agreement"] = min(top1)
    return summary
