"""Hooks the pass manager runs around every pass: checking, numerics, dumps, cost.

Verification, dumps and cost accounting live here, not inside passes (TVM's
PassInstrument idea), so every pass gets them the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx

from graphopt.errors import PassError
from graphopt.ir import check_model, save_model
from graphopt.verify import compare_outputs, make_session, run_model, summarize

log = logging.getLogger(__name__)

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


class Instrument:
    """Base: override the hooks you need."""

    def run_begin(self, model: onnx.ModelProto, report: dict) -> None:
        pass

    def after_pass(self, step: int, pass_, before: onnx.ModelProto, result, record: dict) -> None:
        pass

    def run_end(self, model: onnx.ModelProto, report: dict) -> None:
        pass


class WellFormed(Instrument):
    """The new graph must pass the full checker, use only allowed domains, and load in onnxruntime."""

    def __init__(self, allowed_domains: set[str], level: str = "full"):
        self.allowed_domains = STANDARD_DOMAINS | set(allowed_domains)
        self.full = level == "full"

    def after_pass(self, step, pass_, before, result, record):
        if not result.changed:
            return
        old_domains = {o.domain for o in before.opset_import}
        new_domains = {n.domain for n in result.model.graph.node} - old_domains - self.allowed_domains
        if new_domains:
            raise PassError(f"emitted operators of domain(s) {', '.join(sorted(new_domains))} "
                            "that the target does not allow", pass_.name)
        try:
            check_model(result.model, full=self.full)
        except Exception as err:  # the checker raises several exception types
            raise PassError(f"produced an invalid model: {_first_line(err)}", pass_.name) from err
        try:
            make_session(result.model)
        except Exception as err:
            raise PassError(f"produced a model onnxruntime cannot load: {_first_line(err)}",
                            pass_.name) from err


class Numerics(Instrument):
    """Compare each pass's output with its input on the verification feeds.

    Lossless passes must stay within the relative tolerance (else PassError, exit 3);
    lossy passes get their error measured and recorded.
    """

    def __init__(self, feeds_list):
        self.feeds_list = feeds_list
        self._cache: tuple[bytes, list] | None = None

    def _outputs(self, model):
        key = model.SerializeToString(deterministic=True)
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        session = make_session(model)
        names = [o.name for o in model.graph.output]
        runs = [run_model(session, feeds, names) for feeds in self.feeds_list]
        self._cache = (key, runs)
        return runs

    def after_pass(self, step, pass_, before, result, record):
        if not result.changed or not self.feeds_list:
            record["verification"] = {"passed": True, "skipped": "graph unchanged" if not result.changed
                                      else "no verification inputs"}
            return
        ref_runs = self._outputs(before)
        cand_runs = self._outputs(result.model)
        lossless = pass_.is_lossless()
        comparison = compare_outputs(ref_runs, cand_runs, lossless=lossless)
        verification = {"passed": comparison["passed"], "lossless": lossless,
                        **summarize(comparison["outputs"]), "outputs": comparison["outputs"]}
        record["verification"] = verification
        if lossless and not comparison["passed"]:
            worst = max((m.get("rtol_needed", float("inf")) for m in comparison["outputs"].values()),
                        default=float("inf"))
            raise PassError(f"lossless pass changed outputs beyond tolerance "
                            f"(relative error {worst:.3g} > 1e-05)", pass_.name)


class Dump(Instrument):
    """Write `00-input.onnx` and `NN-passname.onnx` plus `NN-passname.json` step reports."""

    def __init__(self, directory):
        self.directory = Path(directory)

    def run_begin(self, model, report):
        self.directory.mkdir(parents=True, exist_ok=True)
        save_model(model, self.directory / "00-input.onnx")

    def after_pass(self, step, pass_, before, result, record):
        stem = f"{step:02d}-{pass_.name}"
        save_model(result.model, self.directory / f"{stem}.onnx")
        (self.directory / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str))


class StepCost(Instrument):
    """Cost delta of each pass on the selected target."""

    def __init__(self, target):
        self.target = target

    def after_pass(self, step, pass_, before, result, record):
        if not result.changed:
            return
        from graphopt.targets import estimate_cost

        keys = ("macs", "params", "weight_bytes", "latency_ms", "energy_mj", "peak_activation_bytes")
        try:
            old, new = estimate_cost(before, self.target), estimate_cost(result.model, self.target)
        except Exception as err:  # the cost model is advisory: a gap in it must not stop a pass
            log.warning("cost model failed after %s: %s", pass_.name, err)
            record["cost_delta"] = {"error": f"{type(err).__name__}: {err}"}
            return
        record["cost_delta"] = {k: new.get(k, 0) - old.get(k, 0) for k in keys if k in old}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
