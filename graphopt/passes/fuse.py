"""`fuse`: lossless operator fusion, a generic engine that runs rule sets to a fixpoint.

The rules live in graphopt/fusion/ (one module per family, each a list of
pattern/check/rewrite triples, with the math in its docstring). This module only walks:
for every graph (the main graph and each If/Loop/Scan body), visit nodes in order, try the
rules anchored on the node's op type, and after a rewrite refresh the indexes; repeat
until a sweep rewrites nothing, refresh shapes, and repeat until shapes expose nothing new.

Each rewrite site has an id `rule:anchor-node`; ids listed in ctx.skip_sites are left
alone (so `graphopt bisect` can revert sites one by one). Preconditions that fail are
reported as notes ("BN not folded into '/conv3': weight is not constant") and leave the
graph as it was. Fused nodes keep the output name of the last node they replace, so no
tensor changes meaning and the tensor map stays empty.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass

import onnx

from graphopt.fusion import FAMILIES, family_rules
from graphopt.fusion.graph import FusionGraph, is_standard
from graphopt.fusion.rule import Rule
from graphopt.ir import declared_value_info, infer_shapes, keep_declared_value_info, opset_version
from graphopt.ir.rewrite import remove_dead_nodes, topological_order
from graphopt.ir.subgraphs import iter_graphs
from graphopt.passes import Pass, PassContext, PassResult, option, register_pass

log = logging.getLogger(__name__)

MAX_SWEEPS = 50       # per graph and shape round; a sweep that rewrites nothing ends it
MAX_SHAPE_ROUNDS = 4  # shape refreshes between rounds of sweeps
MAX_NOTES = 200


@register_pass
class Fuse(Pass):
    name = "fuse"
    summary = ("BatchNorm/scale/bias folding, MatMul+Add to Gemm, transpose/reshape/cast chains, no-op "
               "removal, CSE, LayerNorm/GELU/HardSwish/Softmax pattern fusion, attention and activation fusion "
               "for targets with contrib kernels")
    lossless = True

    @dataclass
    class Options:
        rules: list[str] = option(list(FAMILIES), f"rule families to run ({', '.join(FAMILIES)})")
        upgrade_opset: bool = option(False, "allow raising the default-domain opset (to 17 for "
                                            "LayerNormalization, 20 for Gelu, 23 for Attention) when a pattern needs it")
        exclude: list[str] = option([], "node names or regular expressions whose nodes are left alone", regex=True)
        subgraphs: bool = option(True, "also fuse inside If/Loop/Scan bodies")

    def _fuse(self, model, rules, ctx, opset, allow_upgrade):
        walk = Walk(rules, ctx, self.options, opset, allow_upgrade)
        walk.ir_version = model.ir_version
        for _ in range(MAX_SHAPE_ROUNDS):
            model = _with_shapes(model, walk.notes)
            graphs = list(iter_graphs(model.graph)) if self.options.subgraphs else [model.graph]
            if not sum(walk.fuse_graph(graph) for graph in graphs):
                break
        walk.model = model
        return walk

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        unknown = [f for f in self.options.rules if f not in FAMILIES]
        if unknown:
            from graphopt.errors import InputError
            raise InputError(f"fuse.rules: unknown families {unknown} (known: {', '.join(FAMILIES)})")
        original = model
        before = model.SerializeToString(deterministic=True)
        declared = declared_value_info(model)
        rules = [r for family in FAMILIES if family in self.options.rules for r in family_rules(family)]
        opset = original_opset = opset_version(model)
        notes: list[str] = []
        if self.options.upgrade_opset:
            model, opset = _upgrade_if_useful(model, rules, ctx, self.options, notes)
        walk = self._fuse(model, rules, ctx, opset, allow_upgrade=False)
        model, walk.notes = walk.model, notes + walk.notes
        if model.ir_version < 4 and walk.stats:
            _conform_ir3(model.graph)
        for domain in sorted(walk.used_domains - {o.domain for o in model.opset_import}):
            model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
        if opset > original_opset:
            walk.stats["opset_upgraded_to"] = opset
        if not walk.stats:  # nothing fused: hand back the input as it was (no refreshed value_info)
            model = original
        elif (problem := _structural_problem(model)) is not None:
            # A rewrite broke the graph (a fuse bug): pass the input through untouched and say so.
            log.warning("fuse: rewrites undone, they left an invalid graph: %s", problem)
            walk.notes.append(f"all rewrites undone: they left an invalid graph ({problem})")
            walk.stats, walk.sites = Counter(), []
            model = onnx.ModelProto.FromString(before)
        keep_declared_value_info(model, declared)  # the walk's shape refreshes are analysis only
        changed = model.SerializeToString(deterministic=True) != before
        log.info("fuse: %s", dict(walk.stats) or "nothing fused")
        notes = sorted(set(walk.notes))[:MAX_NOTES]
        return PassResult(model, changed, dict(walk.stats), notes, {}, walk.sites)


class Walk:
    """The graph walk: rules indexed by anchor op, stats, notes and sites across graphs."""

    def __init__(self, rules: list[Rule], ctx: PassContext, options, opset: int, allow_upgrade: bool):
        self.by_op: dict[str, list[Rule]] = {}
        self.batch_rules = [rule for rule in rules if rule.batch is not None]
        for rule in rules:
            for op in () if rule.batch is not None else rule.ops:
                self.by_op.setdefault(op, []).append(rule)
        self.ctx, self.options, self.opset, self.allow_upgrade = ctx, options, opset, allow_upgrade
        self.exclude = [re.compile(p) for p in options.exclude]
        self.stats: Counter = Counter()
        self.notes: list[str] = []
        self.sites: list[str] = []
        self.needed_opset = 0
        self.used_domains: set[str] = set()
        self.ir_version = 8

    def fuse_graph(self, graph: onnx.GraphProto) -> int:
        """Sweep `graph` until nothing fires; returns the number of rewrites."""
        g = FusionGraph(graph, self.opset, self.ctx.target, self.allow_upgrade, self.ir_version)
        total = 0
        for _ in range(MAX_SWEEPS):
            done = self._sweep(g)
            total += done
            if not done:
                break
        if total:
            remove_dead_nodes(graph)
            order = topological_order(graph)
            if order is not None:  # rewrites insert nodes next to their anchor; keep it sorted
                del graph.node[:]
                graph.node.extend(order)
        self.needed_opset = max(self.needed_opset, g.needed_opset)
        self.used_domains |= g.used_domains
        return total

    def _sweep(self, g: FusionGraph) -> int:
        done = 0
        for rule in self.batch_rules:
            merged = rule.batch(g, lambda m, rule=rule: self.accept(g, rule, m))
            if merged:
                done += merged
                g.refresh()
        for node in list(g.graph.node):
            if id(node) not in g.alive or not is_standard(node):
                continue
            for rule in self.by_op.get(node.op_type, []) + self.by_op.get("*", []):
                if self.try_rule(g, rule, node):
                    done += 1
                    g.refresh()
                    break
        return done

    def try_rule(self, g: FusionGraph, rule: Rule, node: onnx.NodeProto) -> bool:
        """Match, check, rewrite one site; True when the graph changed."""
        m = rule.match(g, node)
        if m is None or not self.accept(g, rule, m):
            return False
        rule.rewrite(g, m)
        return True

    def accept(self, g: FusionGraph, rule: Rule, m) -> bool:
        """Exclusions, preconditions and skip_sites for a matched site; records an accepted one."""
        if any(self._excluded(n) for n in m.nodes):
            return False
        reason = rule.check(g, m)
        if reason:
            self.notes.append(reason)
            log.debug("%s: %s", rule.name, reason)
            return False
        site = rule.site_id(m)
        if site in self.ctx.skip_sites:
            self.notes.append(f"site {site} skipped (skip_sites)")
            return False
        self.stats[rule.name] += 1
        self.sites.append(site)
        log.debug("fused %s", site)
        return True

    def _excluded(self, node: onnx.NodeProto) -> bool:
        return any(p.fullmatch(node.name) or p.pattern == node.name for p in self.exclude)


def _with_shapes(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    try:
        return infer_shapes(model)
    except Exception as err:  # rules then work with the shapes the model already has
        notes.append(f"shape inference failed: {str(err).splitlines()[0][:160]}")
        return model


def _conform_ir3(graph: onnx.GraphProto) -> None:
    """IR < 4: new initializers become graph inputs; unread weight inputs (and their data) go."""
    from graphopt.ir.rewrite import consumers
    from graphopt.ir.subgraphs import outer_scope_names

    read = set(consumers(graph)) | outer_scope_names(graph) | {o.name for o in graph.output}
    inits = {t.name for t in graph.initializer}
    for value in [v for v in graph.input if v.name in inits and v.name not in read]:
        graph.input.remove(value)
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)
    listed = {v.name for v in graph.input}
    for tensor in graph.initializer:
        if tensor.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))


def _structural_problem(model: onnx.ModelProto) -> str | None:
    """First line of the basic checker's complaint (ordering, names), or None."""
    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as err:  # the checker raises several exception types
        return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return None


def _upgrade_if_useful(model, rules, ctx, options, notes):
    """Probe which opset the patterns want; convert the model to it when that helps.

    The probe fuses a copy with newer ops allowed and records the highest opset a rewrite
    relied on. The real run then works on the model converted by onnx's version converter
    (so every other op keeps its meaning), or on the original when conversion fails.
    """
    from onnx import version_converter

    opset = opset_version(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    walk = Fuse(**{"rules": options.rules, "exclude": options.exclude,
                   "subgraphs": options.subgraphs})._fuse(probe, rules, ctx, opset, allow_upgrade=True)
    if walk.needed_opset <= opset:
        return model, opset
    try:
        converted = version_converter.convert_version(model, walk.needed_opset)
        # the lowest IR version that opset needs, so older runtimes still load the file
        needed_ir = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", walk.needed_opset)])
        converted.ir_version = max(model.ir_version, needed_ir)
        onnx.checker.check_model(converted)
    except Exception as err:  # the converter lacks an adapter: keep the opset
        notes.append(f"opset not upgraded to {walk.needed_opset}: {str(err).splitlines()[0][:160]}")
        return model, opset
    return converted, walk.needed_opset
