"""Verification engine: inputs, running, metrics, thresholds."""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.verify.compare import compare_outputs, output_metrics, summarize
from graphopt.verify.inputs import graph_inputs, load_npz, synthesize_inputs
from graphopt.verify.runner import make_session, run_batches, run_model
from graphopt.verify.thresholds import Thresholds


def verify_models(reference: onnx.ModelProto, candidate: onnx.ModelProto,
                  feeds_list: list[dict], thresholds: Thresholds | None = None,
                  lossless: bool = False) -> dict:
    """Run both models on the same feeds; the verification dict of the report."""
    thresholds = thresholds or Thresholds()
    names = [o.name for o in reference.graph.output]
    ref_runs = run_batches(reference, feeds_list, names)
    cand_runs = run_batches(candidate, feeds_list, None)
    result = compare_outputs(ref_runs, cand_runs, lossless=lossless)
    failures = thresholds.failures(result["outputs"])
    result["passed"] = result["passed"] and not failures
    result["failures"] = failures
    result["thresholds"] = thresholds.as_dict()
    result["samples"] = sum(int(next(iter(f.values())).shape[0]) if f and np.ndim(next(iter(f.values()))) else 1
                            for f in feeds_list)
    result.update(summarize(result["outputs"]))
    return result


__all__ = ["Thresholds", "compare_outputs", "graph_inputs", "load_npz", "make_session",
           "output_metrics", "run_batches", "run_model", "summarize", "synthesize_inputs",
           "verify_models"]
