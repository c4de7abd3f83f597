"""`quantize`: QDQ insertion with calibration (static), or dynamic / weight-only quantization.

Static flow: plan placement (graphopt.quantization.placement) -> run the calibration data
through onnxruntime once, streaming statistics of every tensor that needs a range
(graphopt.calibration) -> ranges by `calibration` method -> scale / zero point per tensor
(shared across a scale group: Concat, pass-through ops) -> rewrite (Q/DQ on activations,
int8 per-channel or int4 block weights, int32 biases with s_b = s_x * s_w).

Target-aware defaults: the target's `[quantization]` table (graphopt/targets/data/*.toml)
gives the defaults of activation_type, symmetric_activations, weight_type, per_channel,
activation_matmul, smooth_alpha and float_range_limit; an option the user sets
explicitly always wins (stats["target_defaults"] lists what the target decided). Without
a target (the pass used directly) the option defaults below apply, which are the `cpu`
target's.

Rules: a tensor whose calibrated magnitude reaches `float_range_limit` (additive attention
masks filled with -1e4 .. -3.4e38) is never quantized (its readers stay float: one scale
cannot hold both the mask and the data); Softmax / LayerNormalization are not in the
placement tables, so their inputs stay float; float readers of a quantized tensor (the
residual Add beside a MatMul) read the exact float value; activation x activation MatMuls
stay float unless `activation_matmul`; MatMul inputs whose channels spread more than 4x
are smoothed into the weights first (`smooth_alpha`, graphopt.quantization.smooth).
Optional mixed precision (`min_cosine`) keeps the most sensitive layers in float until the
output cosine vs the float model on the calibration data reaches the target.

Pipelines: a `quantize` with no `fuse` before it gets `cleanup,fuse` inserted in front
(graphopt.pipeline_spec.with_quantize_prerequisites) so that BatchNorm and biases are
folded before ranges are taken; `prepare=false` turns that off.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import onnx

from graphopt.calibration import (
    calibration_feeds,
    collect_statistics,
    compute_range,
    count_samples,
)
from graphopt.calibration.readers import SYNTHETIC_NOTE
from graphopt.ir import clone, opset_version
from graphopt.ir.check import annotate_shapes
from graphopt.passes import Pass, PassContext, PassResult, option, register_pass
from graphopt.quantization import mixed
from graphopt.quantization import params as qp
from graphopt.quantization.dynamic import apply_dynamic, apply_weight_only
from graphopt.quantization.placement import make_plan, node_label
from graphopt.quantization.rewrite import WeightSpec, apply_static
from graphopt.quantization.smooth import apply_smoothing

log = logging.getLogger(__name__)

HUGE_RANGE = 1e4
# option name -> whether the target's [quantization] table may set it
TARGET_KEYS = ("activation_type", "symmetric_activations", "weight_type", "per_channel",
               "activation_matmul", "smooth_alpha", "float_range_limit")
MIXED_EVAL_SAMPLES = 64


@register_pass
class Quantize(Pass):
    name = "quantize"
    summary = "QDQ quantization with calibration (static), dynamic or weight-only; int8/int4 weights"
    lossless = False

    @dataclass
    class Options:
        mode: str = option("static", "static (calibrated Q/DQ), dynamic (runtime activation ranges), "
                           "weight-only", ("static", "dynamic", "weight-only"))
        calibration: str = option("minmax", "range method", ("minmax", "percentile", "entropy", "mse"))
        percentile: float = option(99.99, "percent of values kept by calibration=percentile", low=50.0, high=100.0)
        num_bins: int = option(2048, "histogram bins per tensor (percentile, entropy, mse)", low=16, high=1 << 20)
        max_samples: int = option(0, "calibrate on at most this many samples (0: all)", low=0)
        per_channel: bool = option(True, "per-output-channel weight scales (Conv/Gemm/MatMul); target default")
        activation_type: str = option("uint8", "activation dtype (uint8 runs ~2x faster than int8 "
                                      "in onnxruntime on x86); target default", ("uint8", "int8"))
        symmetric_activations: bool = option(False, "symmetric activation ranges (zero point 0/128); "
                                             "Relu/Clip then stay as ops before the Q; target default")
        weight_type: str = option("int8", "weight dtype; int4 is block-wise (opset 21); target default", ("int8", "int4"))
        block_size: int = option(32, "int4 block size along the reduction axis", low=16)
        exclude: list[str] = option([], "node names, op types or regexes (on names) kept in float", regex=True)
        min_cosine: float = option(0.0, "mixed precision: keep the most sensitive layers in float until "
                                   "output cosine vs float >= this (0: off)")
        activation_matmul: bool = option(False, "also quantize MatMuls whose operands are both activations "
                                         "(attention Q.K^T, P.V); target default")
        smooth_alpha: float = option(0.5, "smoothing: divide outlier channels of MatMul/Gemm inputs by "
                                     "(amax/median)^alpha, folded into the weights (0: off); target default",
                                     low=0.0, high=1.0)
        float_range_limit: float = option(HUGE_RANGE, "tensors whose calibrated |x| reaches this stay "
                                          "float (attention masks); target default", low=0.0)
        prepare: bool = option(True, "in a pipeline, run cleanup,fuse first when no fuse precedes "
                               "this pass (folds BatchNorm and biases before calibration)")

    def __init__(self, **options):
        super().__init__(**options)
        self.explicit = {k.replace("-", "_") for k in options}
        self._given = self.options

    def _target_options(self, ctx: PassContext) -> dict:
        """Target [quantization] defaults for options the user did not set explicitly."""
        table = getattr(ctx.target, "quantization", None) or {}
        chosen = {k: v for k, v in table.items() if k in TARGET_KEYS and k not in self.explicit}
        self.options = dataclasses.replace(self._given, **chosen)
        return chosen

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        chosen = self._chosen = self._target_options(ctx)
        o = self.options
        notes: list[str] = []
        if chosen:
            notes.append(f"target {getattr(ctx.target, 'name', '?')} defaults: "
                         + ", ".join(f"{k}={v}" for k, v in sorted(chosen.items())))
        start = time.perf_counter()
        work = _prepared(clone(model), o.weight_type, notes)
        if work is None:
            return PassResult(model, False, {}, notes)
        keep_float = _skipped_sites(work, ctx.skip_sites)
        spec = WeightSpec(o.weight_type, o.per_channel, o.block_size)
        if o.mode == "dynamic":
            work = _typed(work, notes)
            stats = apply_dynamic(work, o.exclude, keep_float, notes)
            _strip_value_info(work, model)
        elif o.mode == "weight-only":
            stats = apply_weight_only(work, spec, o.exclude, keep_float, notes)
        else:
            return self._static(model, work, ctx, spec, keep_float, notes, start)
        return _result(model, work, stats, notes, start)

    def _static(self, original, work, ctx, spec, keep_float, notes, start) -> PassResult:
        o = self.options
        typed = _typed(work, notes)

        def planned(model, keep):
            return make_plan(model, o.exclude, keep, fold_activations=True, activation_matmul=o.activation_matmul)

        plan = planned(typed, keep_float)
        if not plan.kinds:
            return PassResult(original, False, {"nodes_quantized": {}}, sorted(set(notes + plan.notes)))
        feeds, synthetic = calibration_feeds(original, ctx.calibration_data, o.max_samples or None, ctx.seed)
        if synthetic:
            notes.append(SYNTHETIC_NOTE)
        smoothing = {}
        if o.smooth_alpha > 0:
            index_map, smoothing = apply_smoothing(typed, plan, feeds, o.smooth_alpha)
            if smoothing:
                keep_float = {index_map[i] for i in keep_float}
                plan = planned(typed, keep_float)
        bins = 0 if o.calibration == "minmax" else o.num_bins
        t0 = time.perf_counter()
        tstats = collect_statistics(typed, feeds, plan.activations, bins, ctx.progress)
        calib_s = time.perf_counter() - t0
        ranges = {}

        def params_for(p):
            missing = [name for name in p.activations if name not in tstats]
            if missing:  # a replanned placement reads tensors not seen yet: one run for all
                tstats.update(collect_statistics(typed, feeds, missing, bins))
            for name in p.activations:
                if name not in ranges:
                    ranges[name] = self._range(tstats[name])
            groups: dict[str, list[float]] = {}
            for name in p.activations:
                lo, hi = ranges[name]
                g = groups.setdefault(p.groups[name], [0.0, 0.0])
                g[0], g[1] = min(g[0], lo), max(g[1], hi)
            return {g: qp.activation_params(lo, hi, o.activation_type, o.symmetric_activations)
                    for g, (lo, hi) in groups.items()}

        plan = _drop_huge(typed, plan, tstats, keep_float, o, notes, planned)

        labels_out: list[str] = []

        def build(extra: set[int], last: bool = False):
            p = planned(typed, keep_float | extra)
            m = typed if last else clone(typed)  # the last build rewrites the pass's own copy
            if last:
                labels_out[:] = [node_label(typed.graph.node[i], i) for i in sorted(p.kinds)]
            st = apply_static(m, p, params_for(p), spec, keep_activations=o.symmetric_activations)
            return m, p, st

        stats: dict = {}
        if o.min_cosine > 0:
            eval_feeds = _slice(feeds, MIXED_EVAL_SAMPLES)
            labels = {i: node_label(typed.graph.node[i], i) for i in plan.kinds}
            cores = [i for i, k in plan.kinds.items() if k == "core"]
            sites = {i: ([t for t in typed.graph.node[i].input[:2] if t in plan.activations],
                         plan.output_of(typed.graph, i)) for i in cores}
            extra, stats["mixed_precision"] = mixed.search(lambda s: build(s)[0], original, eval_feeds, cores,
                                                           o.min_cosine, labels, sites, typed)
            keep_float |= extra
        quantized, plan, st = build(set(), last=True)
        _strip_value_info(quantized, original)
        notes.extend(plan.notes)
        stats.update(st)
        if smoothing:
            stats["smoothing"] = smoothing
        stats.update(calibration=o.calibration, activation_type=o.activation_type,
                     symmetric_activations=o.symmetric_activations, target_defaults=self._chosen,
                     tensors_calibrated=len(plan.activations), samples=count_samples(feeds),
                     calibration_s=round(calib_s, 3))
        return _result(original, quantized, stats, notes, start, sites=labels_out)

    def _range(self, s) -> tuple[float, float]:
        o = self.options
        _, _, qmin, qmax = qp.QTYPES[o.activation_type]
        return compute_range(s, o.calibration, symmetric=o.symmetric_activations, qmin=qmin, qmax=qmax,
                             percentile=o.percentile)


def _prepared(model: onnx.ModelProto, weight_type: str, notes: list[str]) -> onnx.ModelProto | None:
    """The model at an opset with per-channel (13) or block-wise int4 (21) DequantizeLinear."""
    need = 21 if weight_type == "int4" else 13
    if opset_version(model) >= need:
        return model
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, need)
    except Exception as err:  # the converter lacks adapters for some ops
        notes.append(f"model left unchanged: cannot convert opset {opset_version(model)} -> {need} ({err})")
        return None
    if need >= 21:
        converted.ir_version = max(converted.ir_version, 10)  # int4 tensors need IR 10
    notes.append(f"opset converted {opset_version(model)} -> {need} for quantized DequantizeLinear")
    return converted


def _typed(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """`model` (the pass's own copy) with inferred shapes, annotated in place."""
    try:
        return annotate_shapes(model)
    except Exception as err:  # placement then only sees declared types
        notes.append(f"shape inference failed ({str(err).splitlines()[0][:120]}); untyped tensors stay float")
        return model


def _skipped_sites(model: onnx.ModelProto, skip: frozenset[str]) -> set[int]:
    return {i for i, n in enumerate(model.graph.node) if node_label(n, i) in skip}


def _drop_huge(typed, plan, tstats, keep_float: set[int], o, notes, planned):
    """Keep in float every quantized node touching a tensor with |x| >= float_range_limit."""
    limit = o.float_range_limit
    for _ in range(8):
        huge = {n for n in plan.activations if n in tstats
                and max(abs(tstats[n].min), abs(tstats[n].max)) >= limit}
        if not huge:
            return plan
        for i in plan.kinds:
            node = typed.graph.node[i]
            touched = set(node.input) | {plan.output_of(typed.graph, i)}
            if touched & huge:
                keep_float.add(i)
                notes.append(f"{node_label(node, i)}: kept in float, a tensor it reads or writes reaches "
                             f"|x| >= {limit:g} (mask-like range; one scale cannot hold it)")
        plan = planned(typed, keep_float)
    return plan


def _slice(feeds: list[dict], samples: int) -> list[dict]:
    out, seen = [], 0
    for f in feeds:
        if seen >= samples:
            break
        out.append(f)
        seen += count_samples([f])
    return out


def _strip_value_info(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """Write no intermediate value_info (shapes stay inferable from the graph).

    Besides going stale where tensors were renamed, declared intermediate shapes change what
    onnxruntime fuses in a QDQ transformer: with them it fuses the residual Add + LayerNorm
    into SkipLayerNormalization, measured ~4x slower than the two ops at one thread on this
    x86 CPU (all-MiniLM-L6-v2: 12 x ~55 us vs ~15 us)."""
    del model.graph.value_info[:]


def _result(original, model, stats, notes, start, sites=None) -> PassResult:
    changed = bool(stats.get("nodes_quantized"))
    stats["quantize_s"] = round(time.perf_counter() - start, 3)
    if not changed:
        notes.append("no node quantized; model unchanged")
        return PassResult(original, False, stats, sorted(set(notes)))
    tensor_map = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized"):
            tensor_map[node.output[0]] = node.input[0][: -len("_quantized")]
    return PassResult(model, True, stats, sorted(set(notes)), tensor_map, sites or [])
