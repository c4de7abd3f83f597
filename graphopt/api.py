"""The Python API: optimize, verify, cost. The CLI is a thin layer over these."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphopt.errors import InputError, VerificationFailed
from graphopt.instruments import Dump, Numerics, StepCost, WellFormed
from graphopt.ir import clone, load_model, save_model
from graphopt.ir.validate import check_level, validate_model
from graphopt.passes import PassContext
from graphopt.pipeline import PassManager, model_stats
from graphopt.pipeline_spec import PipelineConfig, load_pipeline_file, parse_inline, with_quantize_prerequisites
from graphopt.verify import Thresholds, load_npz, synthesize_inputs, verify_models

log = logging.getLogger(__name__)

DEFAULT_VERIFY_SAMPLES = 8


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: dict
    original: onnx.ModelProto | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return bool(self.report.get("verification", {}).get("passed", True))

    def save(self, path, force: bool = True) -> Path:
        return save_model(self.model, path, force=force)


def as_model(model_or_path) -> onnx.ModelProto:
    """Accept a ModelProto, bytes or a path; paths to non-ONNX sources are imported."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray)):
        from graphopt.ir import parse_model_bytes

        return parse_model_bytes(bytes(model_or_path))
    if isinstance(model_or_path, (str, Path)):
        return load_model(model_or_path)
    raise InputError(f"expected an ONNX model or a path, got {type(model_or_path).__name__}")


def as_feeds(data, model: onnx.ModelProto, max_samples: int | None = None) -> list[dict] | None:
    """Feed dicts from an .npz path, a dict of arrays (axis 0 = samples) or an iterable of dicts."""
    if data is None:
        return None
    if isinstance(data, (str, Path)):
        return load_npz(data, model, max_samples)
    if isinstance(data, dict):
        n = min(len(v) for v in data.values())
        feeds = [{k: np.asarray(v)[i:i + 1] for k, v in data.items()} for i in range(n)]
    else:
        feeds = [dict(item) for item in data]
    return feeds[:max_samples] if max_samples else feeds


def resolve_pipeline(passes=None, pipeline=None, target=None) -> tuple[PipelineConfig, Any]:
    """Pass specs and Target from an inline spec, a TOML file, or the target's default."""
    from graphopt.targets import load_target

    if passes is not None and pipeline is not None:
        raise InputError("give either passes or a pipeline file, not both")
    config = load_pipeline_file(pipeline) if pipeline is not None else PipelineConfig([])
    target_obj = load_target(target or config.target or "cpu")
    if passes is not None:
        config.passes = parse_inline(passes) if isinstance(passes, str) else list(passes)
    elif pipeline is None:
        config.passes = parse_inline(target_obj.default_pipeline)
    config.passes, note = with_quantize_prerequisites(config.passes, contrib=bool(target_obj.contrib_domains))
    if note:
        config.notes.append(note)
    return config, target_obj


def optimize(model, passes: str | None = None, *, pipeline=None, target: str | None = None,
             calibration_data=None, inputs=None, verify: bool = True,
             thresholds: dict | Thresholds | None = None, seed: int = 0, dump_dir=None,
             skip_failing: bool = False, progress: bool = False,
             input_shapes: str | None = None, explain_layers: bool = False,
             allow_pickle: bool = False) -> OptimizeResult:
    """Run a pipeline on `model` and verify the result against the original."""
    run = prepare_run(model, passes, pipeline, target, calibration_data, inputs, thresholds, seed,
                      progress, input_shapes, allow_pickle)
    config, target_obj, imported, original = run.config, run.target, run.imported, run.original
    feeds, limits, ctx, warnings, level = run.feeds, run.limits, run.ctx, run.warnings, run.check_level
    instruments = [WellFormed(set(getattr(target_obj, "contrib_domains", [])), level)]
    if verify:
        instruments.append(Numerics(feeds))
    instruments.append(StepCost(target_obj))
    if dump_dir:
        instruments.append(Dump(dump_dir))
    report = {"input": model_stats(original), "target": target_obj.name,
              "pipeline": ",".join(str(s) for s in config.passes), "seed": seed,
              "warnings": warnings}
    if imported:
        from graphopt.importers import verify_import
        from graphopt.importers.verify import verification_feeds

        report["import"] = verify_import(imported, verification_feeds(imported, seed=seed))
        if report["import"].get("passed") is False:
            raise VerificationFailed(f"the imported ONNX model disagrees with {imported.framework} "
                                     f"(cosine {report['import'].get('cosine')})", report)
    start = time.perf_counter()
    manager = PassManager(config.passes, instruments, skip_failing=skip_failing)
    result_model = manager.run(clone(original), ctx, report)
    report["seconds"] = round(time.perf_counter() - start, 3)
    report["output"] = model_stats(result_model)
    report["cost"] = {"before": _cost(original, target_obj), "after": _cost(result_model, target_obj)}
    if verify:
        report["verification"] = verify_models(original, result_model, feeds, limits,
                                               lossless=_all_lossless(report))
    else:
        report["verification"] = {"passed": True, "skipped": "--no-verify"}
    from graphopt.debug import explain, layer_stats

    report["layers"] = layer_stats(result_model)
    if explain_layers and verify:
        report["explain"] = explain(original, result_model, inputs=feeds, tensor_map=report)
    return OptimizeResult(result_model, report, original)


@dataclass
class RunSetup:
    """Everything a pipeline run needs, resolved and validated once (optimize, bisect)."""

    config: PipelineConfig
    target: Any
    original: onnx.ModelProto
    imported: Any
    warnings: list[str]
    check_level: str
    feeds: list[dict]
    limits: Thresholds
    ctx: PassContext


def prepare_run(model, passes=None, pipeline=None, target=None, calibration_data=None, inputs=None,
                thresholds=None, seed: int = 0, progress: bool = False, input_shapes=None,
                allow_pickle: bool = False) -> RunSetup:
    """Resolve the pipeline and target, import or load and validate the model, pick data."""
    config, target_obj = resolve_pipeline(passes, pipeline, target)
    imported = _import_if_needed(model, input_shapes, allow_pickle)
    original = imported.model if imported else as_model(model)
    warnings = validate_model(original) + list(config.notes)
    level = check_level(original)
    require_runnable(original)
    calibration = as_feeds(calibration_data or config.calibration_data, original)
    feeds = verification_inputs(original, inputs, calibration, seed)
    limits = resolve_thresholds(thresholds, config.verify)
    ctx = PassContext(target=target_obj, calibration_data=calibration, verification_inputs=feeds,
                      seed=seed, progress=progress)
    return RunSetup(config, target_obj, original, imported, warnings, level, feeds, limits, ctx)


def require_runnable(model: onnx.ModelProto) -> None:
    """Passes are verified with onnxruntime, so the input must load there."""
    from graphopt.verify import make_session

    try:
        make_session(model)
    except Exception as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise InputError(f"onnxruntime cannot load the input model: {first}") from err


def _import_if_needed(model, input_shapes=None, allow_pickle=False):
    """Framework sources (.pt2, TorchScript, sklearn, TF, HF dirs) are imported first."""
    if isinstance(model, (str, Path)) and Path(model).exists() and not str(model).lower().endswith(".onnx"):
        from graphopt.importers import is_importable, import_source
        from graphopt.importers.sources import unsupported

        if not is_importable(model):
            raise unsupported(Path(model))
        return import_source(model, input_shapes=input_shapes, allow_pickle=allow_pickle)
    return None


def verification_inputs(model, inputs, calibration, seed) -> list[dict]:
    if inputs is not None:
        return as_feeds(inputs, model, DEFAULT_VERIFY_SAMPLES * 8)
    if calibration:
        return calibration[:DEFAULT_VERIFY_SAMPLES]
    return synthesize_runnable_inputs(model, seed)


def synthesize_runnable_inputs(model: onnx.ModelProto, seed: int = 0, count: int = 4) -> list[dict]:
    """Seeded inputs the model actually runs on: unknown dims grow until it does (e.g. audio frames)."""
    from graphopt.verify import make_session, run_model

    session = make_session(model)
    first_error = None
    attempts = [(1, False)] + [(d, last) for last in (False, True) for d in (16, 64, 512)]
    for default_dim, last_only in attempts:
        feeds = synthesize_inputs(model, count=count, seed=seed, default_dim=default_dim, last_only=last_only)
        try:
            run_model(session, feeds[0])
            return feeds
        except Exception as err:  # the runtime rejects the shapes; try bigger ones
            first_error = first_error or err
    message = str(first_error).strip().splitlines()[0][:200]
    raise InputError(f"the model does not run on synthesized inputs ({message}); pass --inputs FILE.npz")


def resolve_thresholds(given, from_file: dict) -> Thresholds:
    if isinstance(given, Thresholds):
        return given
    merged = {**(from_file or {}), **(given or {})}
    return Thresholds.from_dict(merged)


def _all_lossless(report: dict) -> bool:
    return all(p.get("lossless", True) for p in report.get("passes", []) if p.get("changed"))


def _cost(model, target) -> dict:
    from graphopt.targets import estimate_cost

    try:
        cost = estimate_cost(model, target)
    except Exception as err:  # advisory: report the gap instead of failing the run
        log.warning("cost model failed: %s", err)
        return {"error": f"{type(err).__name__}: {err}"}
    return {k: v for k, v in cost.items() if k != "nodes"}


def verify(reference, candidate, inputs=None, min_cosine: float | None = 0.99,
           lossless: bool = False, seed: int = 0, **thresholds) -> dict:
    """Compare two models on the same inputs; the report's verification dict."""
    ref, cand = as_model(reference), as_model(candidate)
    for model in (ref, cand):
        validate_model(model)
        require_runnable(model)
    check_same_signature(ref, cand)
    feeds = verification_inputs(ref, inputs, None, seed)
    limits = Thresholds.from_dict({"min_cosine": min_cosine, **thresholds})
    return verify_models(ref, cand, feeds, limits, lossless=lossless)


def check_same_signature(ref: onnx.ModelProto, cand: onnx.ModelProto) -> None:
    from graphopt.verify import graph_inputs

    ref_in = {i.name for i in graph_inputs(ref)}
    cand_in = {i.name for i in graph_inputs(cand)}
    if not cand_in <= ref_in:
        raise InputError(f"candidate inputs {sorted(cand_in - ref_in)} are not inputs of the reference")
    missing = {o.name for o in ref.graph.output} - {o.name for o in cand.graph.output}
    if missing:
        raise InputError(f"candidate lacks reference output(s) {', '.join(sorted(missing))}")


def cost(model, target: str = "cpu", per_node: bool = False, **kwargs) -> dict:
    from graphopt.targets import estimate_cost, load_target

    return estimate_cost(as_model(model), load_target(target), per_node=per_node, **kwargs)


def require_passed(result: OptimizeResult) -> OptimizeResult:
    """Raise VerificationFailed (exit 2) when the result misses its thresholds."""
    if not result.passed:
        failures = result.report["verification"].get("failures") or ["verification failed"]
        raise VerificationFailed("; ".join(failures), result.report)
    return result
