"""`bisect`: the first pass after which the model misses its thresholds, and the sites why.

The pipeline runs one pass at a time under the same instruments as `optimize` (well-formed
check, lossless numerics). After each pass the model is compared with the ORIGINAL model
on the verification inputs and checked against the thresholds. The first pass that
raises (a compiler bug) or misses a threshold is the culprit. That pass is then rerun on
the same input graph with `ctx.skip_sites` set, to find the rewrite sites responsible
(graphopt.debug.sites: delta debugging over the sites the pass reported), and
`explain` compares the original with the culprit's output to show which tensor the
error appears at.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import onnx

from graphopt.debug.sites import CachedProbe, localize
from graphopt.debug.tensors import count_samples
from graphopt.errors import PassError
from graphopt.instruments import Numerics, WellFormed
from graphopt.ir import clone
from graphopt.pipeline import PassManager
from graphopt.verify import compare_outputs, run_batches, summarize

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("cosine", "snr_db", "max_abs_error", "top1_agreement")


def bisect(model, passes=None, inputs=None, thresholds=None, target=None, calibration_data=None, *,
           pipeline=None, seed: int = 0, max_site_runs: int = 64, explain: bool = True,
           progress: bool = False) -> dict:
    """Run `passes` (inline spec, list of PassSpec, or a `pipeline` TOML file) one by one,
    verify each step against the original, and localize the first failure."""
    from graphopt.api import prepare_run

    run = prepare_run(model, passes, pipeline, target, calibration_data, inputs, thresholds, seed, progress)
    config, target_obj, original, feeds, limits, ctx = (run.config, run.target, run.original, run.feeds,
                                                        run.limits, run.ctx)
    domains = set(getattr(target_obj, "contrib_domains", []))
    stepper = _Stepper(original, feeds, limits, ctx, [WellFormed(domains, run.check_level), Numerics(feeds)])
    result = {"pipeline": ",".join(str(s) for s in config.passes), "target": target_obj.name,
              "thresholds": limits.as_dict(), "samples": count_samples(feeds), "steps": [], "culprit": None}
    current, records = clone(original), []
    for step, spec in enumerate(_progress(config.passes, progress), 1):
        outcome = stepper.attempt(spec, current)
        result["steps"].append(_step_row(step, outcome))
        records.append(outcome.get("record", {}))
        if outcome["failed"]:
            result["culprit"] = _culprit(step, spec, outcome, stepper, current, max_site_runs)
            if explain and outcome.get("model") is not None:
                result["explain"] = _explain(original, outcome["model"], feeds, records)
            break
        current = outcome["model"]
    result["passed"] = result["culprit"] is None
    return result


class _Stepper:
    """Runs one pass (optionally skipping sites) and judges the result against the original."""

    def __init__(self, original, feeds, limits, ctx, instruments):
        self.original, self.feeds, self.limits = original, feeds, limits
        self.ctx, self.instruments = ctx, instruments
        self.names = [o.name for o in original.graph.output]
        self.reference_runs = run_batches(original, feeds, self.names)

    def attempt(self, spec, before: onnx.ModelProto, skip: frozenset = frozenset()) -> dict:
        ctx = dataclasses.replace(self.ctx, skip_sites=frozenset(skip))
        report: dict = {}
        start = time.perf_counter()
        try:
            after = PassManager([spec], self.instruments).run(clone(before), ctx, report)
        except PassError as err:
            record = (report.get("passes") or [{}])[-1]
            return {"failed": True, "error": str(err), "record": record, "model": None,
                    "seconds": round(time.perf_counter() - start, 4)}
        record = report["passes"][0]
        comparison = compare_outputs(self.reference_runs, run_batches(after, self.feeds, self.names))
        failures = self.limits.failures(comparison["outputs"])
        failed = not comparison["passed"] or bool(failures)
        return {"failed": failed, "failures": failures, "record": record, "model": after,
                "seconds": record.get("seconds"), **summarize(comparison["outputs"])}


def _step_row(step: int, outcome: dict) -> dict:
    record = outcome.get("record", {})
    row = {"step": step, "name": record.get("name"), "options": record.get("options", {}),
           "lossless": record.get("lossless"), "changed": record.get("changed"),
           "sites": len(record.get("sites") or []), "seconds": outcome.get("seconds"),
           "passed": not outcome["failed"]}
    row.update({k: outcome[k] for k in (*SUMMARY_KEYS, "failures", "error") if k in outcome})
    return row


def _culprit(step, spec, outcome, stepper, before, max_site_runs) -> dict:
    record = outcome.get("record", {})
    sites = list(record.get("sites") or [])
    culprit = {"step": step, "name": spec.name, "options": record.get("options", {}),
               "reason": "error" if "error" in outcome else "thresholds",
               "sites_total": len(sites)}
    culprit.update({k: outcome[k] for k in ("error", "failures") if outcome.get(k)})
    probe = CachedProbe(lambda applied: _without_model(
        stepper.attempt(spec, before, frozenset(sites) - applied)), max_site_runs)
    probe.cache[frozenset(sites)] = _without_model(outcome)
    culprit.update(localize(sites, probe))
    culprit["reruns"] = probe.runs
    return culprit


def _without_model(outcome: dict) -> dict:
    return {k: v for k, v in outcome.items() if k not in ("model", "record")}


def _explain(original, model, feeds, records) -> dict:
    """Where the culprit's error appears, in the original's terms (tensor maps chained)."""
    from graphopt.debug.explain import explain

    try:
        found = explain(original, model, inputs=feeds, tensor_map={"passes": records}, top=5)
    except Exception as err:  # localization is extra information; never hide the bisect result
        log.warning("explain failed: %s", err)
        return {"error": f"{type(err).__name__}: {err}"}
    return {k: found[k] for k in ("first_divergence", "ranking", "tensors_compared", "layers")}


def _progress(items, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc="bisect", unit="pass", leave=False)
