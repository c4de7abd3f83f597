"""Does the imported ONNX model compute what the framework's model computes?

Both run on the same feeds: the ONNX model in onnxruntime, the original through the
ImportedModel's `reference`. Per output o (concatenated over all feeds):

    err_o = max |onnx_o - ref_o|          passed_o = err_o <= 1e-4 * max |ref_o|  (+1e-6 floor)
    cos_o = <onnx_o, ref_o> / (|onnx_o| |ref_o|)    (1.0 when both are all zeros)

and the result reports max err_o, min cos_o and all(passed_o). A reference output with the
same number of elements but another shape (sklearn's (N,) labels vs ONNX's (N, 1)) is
reshaped to the ONNX shape first.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

log = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_FLOOR = 1e-6  # outputs that are all ~0 would otherwise demand exact equality


def onnx_outputs(model: onnx.ModelProto, feeds_list) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return [session.run(None, {k: v for k, v in feeds.items() if k in names}) for feeds in feeds_list]


def compare(ref_runs, onnx_runs) -> dict:
    """max_abs_error, cosine and passed over runs of [output arrays] (see module doc)."""
    if not ref_runs:
        return {"max_abs_error": None, "cosine": None, "passed": None}
    count = len(onnx_runs[0])
    if any(len(r) != count for r in ref_runs):
        return {"max_abs_error": None, "cosine": None, "passed": False,
                "reason": f"framework gives {len(ref_runs[0])} outputs, ONNX {count}"}
    worst_err, worst_cos, passed = 0.0, 1.0, True
    for index in range(count):
        outs, refs = [], []
        for ref_run, onnx_run in zip(ref_runs, onnx_runs):
            out = np.asarray(onnx_run[index], dtype=np.float64)
            ref = np.asarray(ref_run[index], dtype=np.float64)
            if ref.shape != out.shape:
                if ref.size != out.size:
                    return {"max_abs_error": None, "cosine": None, "passed": False,
                            "reason": f"output {index}: shape {out.shape} vs framework {ref.shape}"}
                ref = ref.reshape(out.shape)
            outs.append(out.ravel())
            refs.append(ref.ravel())
        out, ref = np.concatenate(outs), np.concatenate(refs)
        if not (np.all(np.isfinite(out)) and np.all(np.isfinite(ref))):
            same = np.array_equal(np.isnan(out), np.isnan(ref)) and np.array_equal(out[~np.isfinite(out)],
                                                                                   ref[~np.isfinite(ref)])
            passed &= bool(same)
            keep = np.isfinite(out) & np.isfinite(ref)
            out, ref = out[keep], ref[keep]
        err = float(np.max(np.abs(out - ref))) if out.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        passed &= err <= RELATIVE_TOLERANCE * scale + ABSOLUTE_FLOOR
        worst_err = max(worst_err, err)
        worst_cos = min(worst_cos, _cosine(out, ref))
    return {"max_abs_error": worst_err, "cosine": worst_cos, "passed": bool(passed)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def verify_import(imported, feeds_list) -> dict:
    """{"framework", "max_abs_error", "cosine", "passed"} for the ONNX model vs the framework.

    `passed` is None (and the errors None) when the importer has no framework reference; when
    either side cannot run the feeds, `passed` is False and `reason` says why.
    """
    feeds_list = list(feeds_list if isinstance(feeds_list, (list, tuple)) else [feeds_list])
    result = {"framework": imported.framework}
    if imported.reference is None or not feeds_list:
        result.update(max_abs_error=None, cosine=None, passed=None)
        return result
    try:
        refs = [[np.asarray(a) for a in imported.reference(feeds)] for feeds in feeds_list]
    except Exception as err:  # the framework refuses these inputs: a failed check, not a crash
        result.update(max_abs_error=None, cosine=None, passed=False,
                      reason=f"{imported.framework} cannot run the verification inputs: "
                             f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return result
    try:
        got = onnx_outputs(imported.model, feeds_list)
    except Exception as err:  # onnxruntime errors (shape mismatch on a baked dim, ...)
        result.update(max_abs_error=None, cosine=None, passed=False,
                      reason=f"onnxruntime cannot run the verification inputs: {str(err).splitlines()[0]}")
        return result
    result.update(compare(refs, got))
    log.info("import verification (%s): %s", imported.framework, result)
    return result


def verification_feeds(imported, count: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The traced example feeds (valid token ids, the real batch) plus `count` synthesized ones.

    Synthesized feeds use graphopt.verify's seeded generator (batch 1 on dynamic dims), so a
    model that only works at its traced batch size is caught too.
    """
    feeds_list = [dict(imported.example_feeds)] if imported.example_feeds else []
    try:
        from graphopt.verify import synthesize_inputs

        feeds_list.extend(synthesize_inputs(imported.model, count=count, seed=seed))
    except Exception as err:  # synthesis is best effort when example feeds exist
        if not feeds_list:
            raise
        log.info("no synthesized verification inputs (%s); using the example inputs only", err)
    return feeds_list
