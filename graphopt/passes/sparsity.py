"""`sparsity-2to4`: N:M structured sparsity (default 2:4) on Conv/Gemm/MatMul weights.

Selection (mode=prune): for each constant weight W of a Conv, Gemm or MatMul, take the
reduction axis a from the shared table (graphopt/ir/axes.py), cut it into groups of M
consecutive weights and keep in each group the N of largest magnitude:

    G = group_view(W, a, M)                     # [..., R/M, M]
    keep = top-N of |G| along the last axis     (ties: the lower index wins, stable)
    W_sparse = from_group_view(G * keep)

This is the magnitude criterion of NVIDIA's ASP and Polygraphy's `surgeon prune`; it
minimises ||W - W_sparse||_F over all N:M patterns, group by group. Layers whose
reduction dim R is not a multiple of M (a first conv with 1 or 3 input channels) are
skipped with a note.

mode=annotate only finds weights that already satisfy the pattern (at most N non-zeros
per group) and records them; values are never touched, so it is lossless.

Either way the result is recorded in model.metadata_props["graphopt.sparsity"] (format in
graphopt/sparsity_check.py), which the GPU cost model reads to credit sparse tensor-core
throughput. The model stays standard ONNX: the zeros are stored densely.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.ir import ConstantView, has_subgraphs
from graphopt.ir.rewrite import consumers, graph_output_names
from graphopt.passes import Pass, PassContext, PassResult, option, register_pass
from graphopt.sparsity_check import (
    SPARSE_OPS,
    count_violations,
    from_group_view,
    group_view,
    read_metadata,
    weight_reduction_axis,
    write_metadata,
)

log = logging.getLogger(__name__)

FLOAT_TYPES = (np.float16, np.float32, np.float64)


@dataclass
class Site:
    node: onnx.NodeProto
    weight_name: str
    weight: np.ndarray
    axis: int


@register_pass
class Sparsity2to4(Pass):
    name = "sparsity-2to4"
    summary = "N:M (default 2:4) magnitude sparsity on Conv/Gemm/MatMul weights, recorded in model metadata"
    lossless = False

    @dataclass
    class Options:
        mode: str = option("prune", "prune: zero the smallest weights of each group; annotate: only record "
                           "weights that already follow the pattern", choices=("prune", "annotate"))
        n: int = option(2, "non-zeros kept per group", low=1)
        m: int = option(4, "group size along the reduction (input-channel) axis", low=1)
        exclude: list[str] = option([], "node or weight names (glob patterns) to leave dense")
        min_size: int = option(0, "skip weights with fewer elements than this")

        def __post_init__(self):
            if self.n > self.m:
                raise ValueError(f"n={self.n} must not exceed m={self.m}")

    def is_lossless(self) -> bool:
        return self.options.mode == "annotate"

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        opts = self.options
        if not 0 < opts.n <= opts.m:
            return PassResult(model, False, {}, [f"n={opts.n}, m={opts.m}: need 0 < n <= m; nothing done"])
        model = _copy(model)
        notes: list[str] = []
        if has_subgraphs(model.graph):
            notes.append("If/Loop/Scan subgraphs are left untouched; only main-graph weights are considered")
        sites = self._sites(model.graph, ctx, notes)
        meta = self._previous_record(model, notes)
        layers = {}
        for site in sites:
            row = self._apply(model.graph, site, notes) if opts.mode == "prune" else self._annotate(site, notes)
            if row is not None:
                layers[site.node.name] = row
                meta["tensors"][row["weight"]] = {"axis": site.axis, "node": site.node.name}
        changed = bool(layers) and (opts.mode == "prune" or meta != self._old_meta)
        if meta["tensors"] and changed:
            write_metadata(model, meta)
        stats = self._stats(layers)
        log.info("%s: %d tensors %s", self.name, len(layers), "pruned" if opts.mode == "prune" else "annotated")
        return PassResult(model, changed, stats, notes, sites=sorted(layers))

    def _sites(self, graph: onnx.GraphProto, ctx: PassContext, notes: list[str]) -> list[Site]:
        view = ConstantView(graph)
        found = []
        for node in graph.node:
            if node.op_type not in SPARSE_OPS or node.domain not in ("", "ai.onnx"):
                continue
            site = self._match(node, view, ctx)
            if isinstance(site, str):
                notes.append(f"{node.name or node.op_type}: {site}")
                log.debug("skip %s: %s", node.name, site)
            else:
                found.append(site)
        return found

    def _match(self, node: onnx.NodeProto, view: ConstantView, ctx: PassContext) -> Site | str:
        """The site for `node`, or the reason it does not apply."""
        opts = self.options
        if node.name in ctx.skip_sites:
            return "skipped on request"
        if len(node.input) < 2 or not view.may_be_constant(node.input[1]):
            return "weight is not a constant (`cleanup` folds Transpose(weight) and the like)"
        name = node.input[1]
        if any(fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(name, p) for p in opts.exclude):
            return "excluded"
        weight = view.get(name)
        if weight is None or weight.dtype.type not in FLOAT_TYPES:
            return f"weight {name} is not a float constant"
        axis = weight_reduction_axis(node, weight)
        if axis is None:
            return f"weight {name} has rank {weight.ndim}; no reduction axis"
        if weight.size < opts.min_size:
            return f"weight {name} has {weight.size} < min_size={opts.min_size} elements"
        if weight.shape[axis] % opts.m:
            return f"reduction dim {weight.shape[axis]} of {name} is not a multiple of {opts.m}"
        return Site(node, name, weight, axis)

    def _previous_record(self, model: onnx.ModelProto, notes: list[str]) -> dict:
        """Start from the model's existing record when it uses the same pattern."""
        opts = self.options
        fresh = {"pattern": f"{opts.n}:{opts.m}", "n": opts.n, "m": opts.m, "tensors": {}}
        try:
            old = read_metadata(model)
        except ValueError:
            old = None
            notes.append("existing sparsity metadata is malformed; replaced")
        if old and old.get("pattern") == fresh["pattern"]:
            fresh["tensors"] = dict(old["tensors"])
        elif old:
            notes.append(f"existing sparsity record uses pattern {old.get('pattern')!r}; replaced")
        self._old_meta = {**fresh, "tensors": dict(fresh["tensors"])}
        return fresh

    def _annotate(self, site: Site, notes: list[str]) -> dict | None:
        violations, groups = count_violations(site.weight, site.axis, self.options.n, self.options.m)
        if violations:
            notes.append(f"{site.node.name}: {site.weight_name} has {violations}/{groups} groups "
                         f"with more than {self.options.n} non-zeros; not annotated")
            return None
        return _row(site.weight_name, site.axis, site.weight, site.weight)

    def _apply(self, graph: onnx.GraphProto, site: Site, notes: list[str]) -> dict:
        pruned = prune_nm(site.weight, site.axis, self.options.n, self.options.m)
        name = self._weight_slot(graph, site)
        tensor = numpy_helper.from_array(pruned, name)
        inits = {t.name: i for i, t in enumerate(graph.initializer)}
        if name in inits:
            graph.initializer[inits[name]].CopyFrom(tensor)
        else:
            graph.initializer.append(tensor)
            site.node.input[1] = name
            notes.append(f"{site.node.name}: {site.weight_name} is shared or not an initializer; "
                         f"pruned copy {name}")
        return _row(name, site.axis, site.weight, pruned)

    def _weight_slot(self, graph: onnx.GraphProto, site: Site) -> str:
        """Where the pruned weight goes: in place when this node is its only reader, else a copy."""
        inits = {t.name for t in graph.initializer}
        readers = consumers(graph).get(site.weight_name, [])
        fixed = {i.name for i in graph.input} | graph_output_names(graph)
        if site.weight_name in inits and len(readers) == 1 and site.weight_name not in fixed:
            return site.weight_name
        taken = inits | {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
        base, k = f"{site.weight_name}_{self.options.n}of{self.options.m}", 0
        name = base
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name

    def _stats(self, layers: dict) -> dict:
        key = "tensors_pruned" if self.options.mode == "prune" else "tensors_annotated"
        return {key: len(layers), "pattern": f"{self.options.n}:{self.options.m}",
                "weights_zeroed": sum(r["zeroed"] for r in layers.values()),
                "params_in_sparse_tensors": sum(r["params"] for r in layers.values()),
                "layers": layers}


def prune_nm(weight: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keep the `n` largest-magnitude weights of every `m` consecutive ones along `axis`."""
    groups = group_view(weight, axis, m)
    # Stable sort of -|w| so equal magnitudes keep the lower index: deterministic output.
    order = np.argsort(-np.abs(groups), axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return from_group_view(np.where(keep, groups, 0).astype(weight.dtype), weight.shape, axis)


def _row(name: str, axis: int, before: np.ndarray, after: np.ndarray) -> dict:
    size = max(before.size, 1)
    return {"weight": name, "axis": axis, "params": int(before.size),
            "zeroed": int(np.count_nonzero(before) - np.count_nonzero(after)),
            "sparsity_before": round(1 - np.count_nonzero(before) / size, 4),
            "sparsity_after": round(1 - np.count_nonzero(after) / size, 4)}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
