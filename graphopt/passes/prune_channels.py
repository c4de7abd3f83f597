"""`prune-channels`: structured pruning by removing whole channels, hidden units and heads.

The coupling analysis (graphopt.pruning.coupling) groups every dimension that must shrink
together; the plan (graphopt.pruning.plan) scores units (l1 / l2 group norms or mean
|activation|) and keeps round((1 - ratio) * U) per group (or a global ratio), honouring
`round_to`, `min_channels`, `exclude`; the rewrite (graphopt.pruning.rewrite) slices
weights, biases, BN statistics, constants, Reshape / Split / Slice / Resize sizes and Conv
groups. Lossy: a removed channel's contribution is dropped. When a removed channel's
producer parameters are exactly zero (and activations map 0 to 0) the outputs are
unchanged, which is what the exactness tests check. The result is re-inferred and
checker-validated; if that ever fails the input model is returned unchanged with a note.
The lossless `cleanup` pass runs first (sorted, Transpose(weight) and shape arithmetic
folded), so a pruned model also comes out cleaned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx

from graphopt.ir import check_model, infer_shapes
from graphopt.passes import Pass, PassContext, PassResult, option, register_pass
from graphopt.pruning.cost import count_cost
from graphopt.pruning.plan import make_plan, prepare
from graphopt.pruning.rewrite import apply_plan

log = logging.getLogger(__name__)


@register_pass
class PruneChannels(Pass):
    name = "prune-channels"
    summary = "structured pruning: remove whole channels / hidden units / heads and every coupled slice"
    lossless = False

    @dataclass
    class Options:
        ratio: float = option(0.3, "fraction of each group's channels (units) to remove", low=0.0, high=1.0)
        criterion: str = option("l1", "importance: l1 / l2 weight group norm, or mean |activation|",
                                ("l1", "l2", "activation"))
        scope: str = option("uniform", "ratio per group, or one global ranking over groups",
                            ("uniform", "global"))
        round_to: int = option(1, "keep channel counts a multiple of this (hardware vector width)", low=1)
        min_channels: int = option(1, "never keep fewer channels in a group", low=1)
        exclude: list[str] = option([], "node names or regexes whose groups are left alone", regex=True)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        if not 0.0 <= self.options.ratio < 1.0:
            from graphopt.errors import InputError
            raise InputError(f"prune-channels.ratio={self.options.ratio}: expected 0 <= ratio < 1")
        work, reason = prepare(model)
        if work is None:
            return PassResult(model, False, {"groups_pruned": 0}, [reason])
        plan = make_plan(work, self.options, ctx.data_for_statistics(), ctx.skip_sites)
        stats = {"groups": plan.rows, "groups_found": len(plan.coupling.groups()),
                 "groups_pruned": len(plan.kept_units),
                 "groups_not_pruned": len(plan.coupling.groups()) - len(plan.rows)}
        if not plan.kept_units:
            return PassResult(model, False, stats, plan.notes + ["nothing to prune"])
        before = count_cost(work, inferred=True)  # same (cleaned) representation as after
        apply_plan(plan.coupling, plan.kept_units)
        pruned = _finish(plan.coupling.model)
        if isinstance(pruned, str):
            return PassResult(model, False, stats, plan.notes + [pruned])
        after = count_cost(pruned, inferred=True)
        stats.update({"cost_basis": "per sample, symbolic dims counted as 1 (graphopt.pruning.cost)",
                      "params_before": before["params"], "params_after": after["params"],
                      "macs_before": before["macs"], "macs_after": after["macs"],
                      "channels_before": sum(r["channels_before"] for r in plan.rows),
                      "channels_after": sum(r["channels_after"] for r in plan.rows)})
        sites = [r["group"] for r in plan.rows if r["channels_after"] < r["channels_before"]]
        log.info("prune-channels: %d groups pruned, MACs %s -> %s", len(sites),
                 before["macs"], after["macs"])
        return PassResult(pruned, True, stats, plan.notes, sites=sites)


def _finish(model: onnx.ModelProto) -> onnx.ModelProto | str:
    """Drop stale shapes and dead constants, re-infer, full check; a reason on failure."""
    from graphopt.ir.rewrite import remove_dead_nodes

    del model.graph.value_info[:]
    remove_dead_nodes(model.graph)
    try:
        model = infer_shapes(model, strict=True)
        check_model(model, full=True)
    except Exception as err:
        return f"pruned graph failed validation, input kept: {str(err).splitlines()[0][:300]}"
    return model
