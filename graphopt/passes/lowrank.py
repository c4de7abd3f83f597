"""`lowrank`: split a product with a constant 2-D weight into two thinner products (SVD).

Every supported layer is first written as y = x · W_eff + b with W_eff of shape [K, N]:

    MatMul(X, W)                          W_eff = W
    Gemm(A, B, C; transA, transB, α, β)   W_eff = α · (Bᵀ if transB else B),  b = β·C
    Conv 1x1, group 1, W[O, I, 1, 1]      W_eff = W[:, :, 0, 0]ᵀ                (conv1x1=true)

With the SVD W_eff = U S Vᵀ (singular values s_1 >= s_2 >= ...), the rank-k truncation
W_k = (U_k S_k^½)(S_k^½ V_kᵀ) = P Q is the best rank-k approximation (Eckart–Young), with
relative squared error 1 - Σ_{i<=k} s_i² / Σ s_i², so "energy" e picks the smallest k with
Σ_{i<=k} s_i² >= e · Σ s_i². k is capped at the numerical rank
r = #{s_i > s_1 · max(K, N) · eps(dtype)}: for k = r the dropped singular values are at
round-off level, so a rank-deficient weight is split exactly. The new layer is

    MatMul(MatMul(X, P), Q)  |  Gemm(Gemm(A, P; transA), Q, C; β)  |  Conv(Conv(X, Pᵀ), Qᵀ, b)

(strides/pads stay on the first 1x1 Conv, the bias on the second product).

A split pays only when it is smaller and faster: parameters drop iff k (K + N) < K N, i.e.
k < K N / (K + N); latency is asked of the target's cost model,
matmul_latency_ms(m, K, k) + matmul_latency_ms(m, k, N) < matmul_latency_ms(m, K, N), where
m is the number of rows the layer sees on the verification inputs (the extra node has a
fixed per-op overhead, so small layers rarely pay); `min_saving` can demand a larger
parameter cut. Without a target only the parameter rule applies, and a note says so. Each split layer reports k, kept energy, params and MACs
before/after and its output error on the verification inputs (run through onnxruntime).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.ir import ConstantView, has_subgraphs
from graphopt.ir.graph import opset_version
from graphopt.ir.rewrite import consumers, graph_output_names
from graphopt.passes import Pass, PassContext, PassResult, option, register_pass

log = logging.getLogger(__name__)

FLOAT_DTYPES = {np.dtype(np.float16): "fp16", np.dtype(np.float32): "fp32", np.dtype(np.float64): "fp32"}


@dataclass
class Site:
    node: onnx.NodeProto
    index: int
    weight_name: str
    w_eff: np.ndarray  # [K, N] float64, alpha folded in
    dtype: np.dtype


@register_pass
class LowRank(Pass):
    name = "lowrank"
    summary = "SVD split of Gemm/MatMul (and 1x1 Conv) with constant 2-D weights into two thinner products"
    lossless = False

    @dataclass
    class Options:
        rank: int = option(0, "keep this many singular values per layer (0 = unset)", low=0)
        energy: float = option(0.0, "keep the smallest rank holding this fraction of squared singular values "
                               "(0 = unset)", low=0.0, high=1.0)
        ratio: float = option(0.0, "keep this fraction of each layer's full rank (0 = unset)", low=0.0, high=1.0)
        min_size: int = option(4096, "skip weights with fewer elements than this")
        exclude: list[str] = option([], "node or weight names (glob patterns) to leave alone")
        conv1x1: bool = option(False, "also split 1x1 Conv layers with group=1")
        min_saving: float = option(0.0, "split a layer only if it saves at least this fraction of its "
                                   "parameters (small savings rarely repay the accuracy lost)")
        force: bool = option(False, "split even where parameters or target cost do not drop (experiments)")

    def is_lossless(self) -> bool:
        # With no truncation option (or one that keeps everything) k = numerical rank: exact.
        o = self.options
        return o.rank == 0 and (o.ratio == 0 or o.ratio >= 1) and (o.energy == 0 or o.energy >= 1)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        notes: list[str] = []
        if has_subgraphs(model.graph):
            notes.append("If/Loop/Scan subgraphs are left untouched; only the main graph is split")
        sites = self._sites(model.graph, ctx, notes)
        if not sites:
            return PassResult(model, False, {"layers_split": 0}, notes)
        acts = layer_activations(model, [s.node for s in sites], ctx, notes)
        latency = _latency_fn(ctx.target, notes)
        out = onnx.ModelProto()
        out.CopyFrom(model)
        layers, splits = {}, []
        taken = _all_names(model.graph)
        for site in sites:
            split = self._plan(site, acts, latency, notes)
            if isinstance(split, str):
                notes.append(f"{site.node.name}: {split}")
                continue
            build_replacement(split, taken, gemm_needs_c=opset_version(model) < 11)
            split.error = layer_error(model, split, acts)
            layers[site.node.name] = split.stats()
            splits.append(split)
        for split in sorted(splits, key=lambda s: -s.index):  # back to front keeps indices valid
            out.graph.node.pop(split.index)
            for offset, new in enumerate(split.nodes):
                out.graph.node.insert(split.index + offset, new)
            out.graph.initializer.extend(split.initializers)
        _drop_orphans(out.graph, {s.weight_name for s in splits})
        if not splits:
            return PassResult(model, False, {"layers_split": 0}, notes)
        log.info("lowrank: split %d of %d candidate layers", len(splits), len(sites))
        return PassResult(out, True, _totals(layers), notes, sites=sorted(layers))

    def _sites(self, graph: onnx.GraphProto, ctx: PassContext, notes: list[str]) -> list[Site]:
        view = ConstantView(graph)
        found = []
        for index, node in enumerate(graph.node):
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gemm", "MatMul", "Conv"):
                continue
            site = self._match(node, index, view, ctx)
            if isinstance(site, Site):
                found.append(site)
            elif site:
                notes.append(f"{node.name or node.op_type}: {site}")
        return found

    def _match(self, node, index, view: ConstantView, ctx: PassContext) -> Site | str | None:
        """The site, a reason it does not apply, or None for a Conv when conv1x1 is off."""
        if node.op_type == "Conv" and not self.options.conv1x1:
            return None
        if node.name in ctx.skip_sites:
            return "skipped on request"
        if len(node.input) < 2 or not view.may_be_constant(node.input[1]):
            return "weight is not a constant"
        name = node.input[1]
        if any(fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(name, p) for p in self.options.exclude):
            return "excluded"
        weight = view.get(name)
        if weight is None or weight.dtype not in FLOAT_DTYPES:
            return f"weight {name} is not a float constant"
        w_eff = _effective_weight(node, weight)
        if isinstance(w_eff, str):
            return w_eff
        if weight.size < self.options.min_size:
            return f"weight {name} has {weight.size} < min_size={self.options.min_size} elements"
        return Site(node, index, name, w_eff, weight.dtype)

    def _plan(self, site: Site, acts, latency, notes) -> LayerSplit | str:
        """Choose k and check that the split pays; a reason string when it does not."""
        kdim, ndim = site.w_eff.shape
        if not np.isfinite(site.w_eff).all():
            return "weight (or alpha) has NaN/Inf values; SVD undefined"
        # Singular values alone are ~3x cheaper than the full SVD: decide first, factor after.
        s = np.linalg.svd(site.w_eff, compute_uv=False)
        if s[0] == 0:
            return "weight is all zeros"
        r = int(np.sum(s > s[0] * max(kdim, ndim) * np.finfo(site.dtype).eps))
        k = self._choose_rank(s, r)
        energy = float(np.sum(s[:k] ** 2) / np.sum(s ** 2))
        m = acts.rows(site.node, ndim)
        split = LayerSplit(site.node, site.index, site.weight_name, k, r, energy, kdim, ndim, m)
        reason = None if self.options.force else self._no_gain(split, site.dtype, latency)
        if reason:
            return reason
        split.p, split.q = _factors(site.w_eff, k, site.dtype)
        return split

    def _no_gain(self, split: LayerSplit, dtype: np.dtype, latency) -> str | None:
        """Why splitting at rank k does not pay (parameters, then target latency), or None."""
        k, kdim, ndim, m = split.k, split.kdim, split.ndim, split.m
        if k * (kdim + ndim) >= kdim * ndim:
            return (f"not split: rank {k} (numerical rank {split.numerical_rank}) keeps {k * (kdim + ndim)} >= "
                    f"{kdim * ndim} params; needs k < {kdim * ndim / (kdim + ndim):.1f}")
        saving = 1 - k * (kdim + ndim) / (kdim * ndim)
        if saving < self.options.min_saving:
            return f"not split: rank {k} saves {saving:.1%} of the params < min_saving={self.options.min_saving}"
        if latency is None:
            return None
        name = FLOAT_DTYPES[dtype]
        split.latency_before = latency(m, kdim, ndim, name)
        split.latency_after = latency(m, kdim, k, name) + latency(m, k, ndim, name)
        if split.latency_after >= split.latency_before:
            return (f"not split: rank {k} costs {split.latency_after:.4g} ms >= "
                    f"{split.latency_before:.4g} ms on the target (m={m})")
        return None

    def _choose_rank(self, s: np.ndarray, r: int) -> int:
        o = self.options
        if o.rank > 0:
            k = o.rank
        elif o.energy > 0:
            cumulative = np.cumsum(s ** 2) / np.sum(s ** 2)
            k = int(np.searchsorted(cumulative, min(o.energy, 1.0) - 1e-12) + 1)
        elif o.ratio > 0:
            k = math.ceil(o.ratio * len(s))
        else:
            k = r
        return max(1, min(k, r))


def _factors(w_eff: np.ndarray, k: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """P = U_k S_k^1/2 [K, k], Q = S_k^1/2 V_k^T [k, N] (balanced scales, in the weight's dtype)."""
    tall = w_eff.shape[0] >= w_eff.shape[1]
    # LAPACK is faster on the tall orientation; W^T = V S U^T gives the same factors swapped.
    u, s, vt = np.linalg.svd(w_eff if tall else w_eff.T, full_matrices=False)
    if not tall:
        u, vt = vt.T, u.T
    root = np.sqrt(s[:k])
    return (u[:, :k] * root).astype(dtype), (root[:, None] * vt[:k]).astype(dtype)


def _effective_weight(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray | str:
    """W_eff [K, N] (float64) with y = x · W_eff (+ bias), or why the layer is not a fit."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    w = weight.astype(np.float64)
    if node.op_type == "MatMul":
        return w if w.ndim == 2 else f"weight has rank {w.ndim}, not 2"
    if node.op_type == "Gemm":
        w = w.T if attrs.get("transB", 0) else w
        return attrs.get("alpha", 1.0) * w
    if w.ndim < 3 or any(d != 1 for d in w.shape[2:]) or attrs.get("group", 1) != 1:
        return "not a 1x1 Conv with group=1"
    return w.reshape(w.shape[0], w.shape[1]).T


def _latency_fn(target, notes: list[str]):
    """matmul_latency_ms bound to the target, or None (parameter rule only) with a note."""
    if target is None:
        notes.append("no target given: layers split by the parameter rule k < KN/(K+N) only")
        return None
    try:
        from graphopt.targets import matmul_latency_ms
    except ImportError:
        notes.append("target cost model unavailable: layers split by the parameter rule only")
        return None
    return lambda m, k, n, dtype: matmul_latency_ms(target, m, k, n, dtype=dtype)


def _totals(layers: dict) -> dict:
    total = {key: sum(row[key] for row in layers.values())
             for key in ("params_before", "params_after", "macs_before", "macs_after")}
    return {"layers_split": len(layers), **total, "layers": layers}



# ---------------------------------------------------------------- one layer's split
@dataclass
class LayerSplit:
    """A planned split of one node: factors, cost numbers, and (once built) its new nodes."""

    node: onnx.NodeProto
    index: int
    weight_name: str
    k: int
    numerical_rank: int
    energy: float
    kdim: int
    ndim: int
    m: int
    p: np.ndarray | None = None  # [K, k]
    q: np.ndarray | None = None  # [k, N]
    latency_before: float | None = None
    latency_after: float | None = None
    error: dict | None = None
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def stats(self) -> dict:
        row = {"op": self.node.op_type, "weight": self.weight_name, "shape": [self.kdim, self.ndim],
               "k": self.k, "numerical_rank": self.numerical_rank, "kept_energy": round(self.energy, 6),
               "params_before": self.kdim * self.ndim, "params_after": self.k * (self.kdim + self.ndim),
               "macs_before": self.m * self.kdim * self.ndim, "macs_after": self.m * self.k * (self.kdim + self.ndim),
               "rows": self.m}
        if self.latency_before is not None:
            row["latency_ms_before"] = round(self.latency_before, 6)
            row["latency_ms_after"] = round(self.latency_after, 6)
        if self.error is not None:
            row.update(self.error)
        return row


def build_replacement(split: LayerSplit, taken: set[str], gemm_needs_c: bool) -> None:
    """The two nodes (and factor initializers) that replace `split.node`; names kept unique."""
    node, out = split.node, split.node.output[0]
    base = node.name or out
    p_name, q_name, mid = (_fresh(f"{out}_lowrank_{tag}", taken) for tag in ("P", "Q", "mid"))
    names = [_fresh(f"{base}/lowrank_{i}", taken) for i in (1, 2)]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul":
        first = helper.make_node("MatMul", [node.input[0], p_name], [mid], names[0])
        second = helper.make_node("MatMul", [mid, q_name], [out], names[1])
        factors = [split.p, split.q]
    elif node.op_type == "Gemm":
        first_inputs = [node.input[0], p_name]
        if gemm_needs_c:  # Gemm before opset 11 requires C
            first_inputs.append(_fresh(f"{out}_lowrank_zero", taken))
            split.initializers.append(numpy_helper.from_array(np.zeros(split.k, split.p.dtype), first_inputs[-1]))
        first = helper.make_node("Gemm", first_inputs, [mid], names[0], transA=attrs.get("transA", 0))
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        second = helper.make_node("Gemm", [mid, q_name, *bias], [out], names[1], beta=attrs.get("beta", 1.0))
        factors = [split.p, split.q]
    else:  # 1x1 Conv: strides/pads/dilations on the first, bias on the second
        ones = [1] * (len(attrs.get("kernel_shape", [1, 1])))
        kept = {k: v for k, v in attrs.items() if k in ("strides", "pads", "dilations", "auto_pad")}
        first = helper.make_node("Conv", [node.input[0], p_name], [mid], names[0], kernel_shape=ones, **kept)
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        second = helper.make_node("Conv", [mid, q_name, *bias], [out], names[1], kernel_shape=ones)
        shape = [1] * len(ones)
        factors = [split.p.T.reshape(split.k, split.kdim, *shape), split.q.T.reshape(split.ndim, split.k, *shape)]
    split.nodes = [first, second]
    split.initializers += [numpy_helper.from_array(np.ascontiguousarray(f), n)
                           for f, n in zip(factors, (p_name, q_name))]


def _fresh(name: str, taken: set[str]) -> str:
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {n.name for n in graph.node}
    return names | {o for n in graph.node for o in n.output}


def _drop_orphans(graph: onnx.GraphProto, weights: set[str]) -> None:
    """Remove replaced weights (initializer or Constant node) that nothing reads any more."""
    readers = consumers(graph)
    keep = graph_output_names(graph)
    for name in sorted(weights):
        if readers.get(name) or name in keep:
            continue
        for tensor in [t for t in graph.initializer if t.name == name]:
            graph.initializer.remove(tensor)
        for value in [i for i in graph.input if i.name == name]:
            graph.input.remove(value)  # IR<4 lists initializers as inputs too
        for node in [n for n in graph.node if n.op_type == "Constant" and list(n.output) == [name]]:
            graph.node.remove(node)


# ---------------------------------------------------------------- activations and layer error
class Activations:
    """Layer inputs and outputs captured on the verification inputs (one list per tensor)."""

    def __init__(self, values: dict[str, list[np.ndarray]] | None = None):
        self.values = values or {}

    def rows(self, node: onnx.NodeProto, ndim: int) -> int:
        """Rows of the product on the first input: output elements / output features."""
        outs = self.values.get(node.output[0])
        return max(1, outs[0].size // ndim) if outs else 1


def layer_activations(model: onnx.ModelProto, nodes, ctx: PassContext, notes: list[str]) -> Activations:
    """Run the model once per feed (at most two) exposing every candidate's inputs and output."""
    from graphopt.verify.runner import make_session, run_model

    feeds = list(ctx.verification_inputs or [])[:2]
    if not feeds:
        try:
            from graphopt.verify.inputs import synthesize_inputs
            feeds = synthesize_inputs(model, count=1, seed=ctx.seed)
            notes.append("no verification inputs: layer errors and row counts from one synthesized input")
        except Exception as err:  # synthesis is best effort; cost falls back to m=1
            notes.append(f"no inputs for layer errors ({str(err)[:120]}); row count m=1 assumed")
            return Activations()
    view = ConstantView(model.graph)
    wanted = sorted({name for node in nodes for name in [*node.input, node.output[0]]
                     if name and not view.may_be_constant(name)})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in present)
    try:
        session = make_session(probe)
        runs = [{**feed, **run_model(session, feed)} for feed in feeds]
    except Exception as err:  # the pass still works without errors; say why
        notes.append(f"could not run the model for layer errors: {str(err).splitlines()[0][:160]}")
        return Activations()
    return Activations({n: [run[n] for run in runs] for n in wanted if all(n in run for run in runs)})


def layer_error(model: onnx.ModelProto, split: LayerSplit, acts: Activations) -> dict | None:
    """Max abs and relative L2 error of the split layer's output against the original's."""
    from graphopt.verify.runner import make_session, run_model

    node, out = split.node, split.node.output[0]
    dynamic = [n for n in node.input if n and n in acts.values]
    if out not in acts.values or not dynamic:
        return None
    view = ConstantView(model.graph)
    fixed = {n: view.get(n) for n in node.input if n and n not in acts.values}
    if any(value is None for value in fixed.values()):
        return None  # an input neither captured nor constant: nothing to run the layer on
    consts = [numpy_helper.from_array(np.asarray(value), n) for n, value in fixed.items()]
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(acts.values[n][0].dtype), None)
              for n in dynamic]
    graph = helper.make_graph(split.nodes, "lowrank_layer", inputs, [onnx.ValueInfoProto(name=out)],
                              consts + list(split.initializers))
    mini = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
    try:
        session = make_session(mini)
    except Exception as err:  # the error figure is informative; the split itself stands
        log.debug("layer error of %s not measured: %s", node.name, err)
        return None
    diff_sq = ref_sq = max_abs = 0.0
    for i, ref in enumerate(acts.values[out]):
        got = run_model(session, {n: acts.values[n][i] for n in dynamic})[out].astype(np.float64)
        diff = got - ref.astype(np.float64)
        max_abs = max(max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        diff_sq += float(np.sum(diff ** 2))
        ref_sq += float(np.sum(ref.astype(np.float64) ** 2))
    return {"output_max_abs_error": max_abs, "output_rel_error": math.sqrt(diff_sq / ref_sq) if ref_sq else 0.0}
