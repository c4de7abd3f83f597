"""The pass manager: build passes from a spec, run them transactionally, report.

Each pass gets a private copy of the model. After a pass the instruments check that the
graph is well formed, loads in onnxruntime and (for lossless passes) computes the same
outputs to float round-off. A pass that raises or breaks the graph stops the run with a
PassError naming the pass and the passes before it (exit 3), or, with `skip_failing`, is
rolled back and recorded as such.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import onnx

from graphopt.errors import GraphoptError, InputError, PassError
from graphopt.instruments import Instrument
from graphopt.ir import clone
from graphopt.ir.graph import conform_to_ir_version
from graphopt.passes import PassContext, create_pass
from graphopt.pipeline_spec import PassSpec, parse_inline

log = logging.getLogger(__name__)


def model_stats(model: onnx.ModelProto) -> dict:
    """Node count (subgraphs included), parameter count and serialized bytes."""
    from graphopt.ir import ConstantView, iter_graphs

    nodes = params = 0
    for graph in iter_graphs(model.graph):
        nodes += len(graph.node)
        params += sum(_numel(t.dims) for t in graph.initializer)
        view = ConstantView(graph)
        params += sum(int(getattr(view.get(n.output[0]), "size", 0) or 0)
                      for n in graph.node if n.op_type == "Constant" and n.output)
    return {"nodes": nodes, "params": params, "bytes": model.ByteSize()}


def _numel(dims) -> int:
    total = 1
    for d in dims:
        total *= d
    return total


@dataclass
class PassManager:
    """Runs a list of passes with instruments around each."""

    specs: list[PassSpec]
    instruments: list[Instrument] = field(default_factory=list)
    skip_failing: bool = False

    @classmethod
    def from_text(cls, text: str, **kwargs) -> "PassManager":
        return cls(parse_inline(text), **kwargs)

    def build(self):
        return [create_pass(spec.name, spec.options) for spec in self.specs]

    def run(self, model: onnx.ModelProto, ctx: PassContext, report: dict) -> onnx.ModelProto:
        passes = self.build()  # option errors surface before any work
        for inst in self.instruments:
            inst.run_begin(model, report)
        report.setdefault("passes", [])
        ran: list[str] = []
        current = model
        for step, pass_ in enumerate(passes, 1):
            current = self._run_one(step, pass_, current, ctx, report, ran)
            ran.append(pass_.name)
        for inst in self.instruments:
            inst.run_end(current, report)
        return current

    def _run_one(self, step, pass_, before, ctx, report, ran) -> onnx.ModelProto:
        record = {"name": pass_.name, "options": pass_.option_values(), "lossless": pass_.is_lossless()}
        log.info("pass %d: %s", step, pass_.name)
        start = time.perf_counter()
        try:
            result = self._apply(pass_, before, ctx)
            conform_to_ir_version(result.model)  # passes need not know IR<4 rules
            record.update({"changed": result.changed, "seconds": round(time.perf_counter() - start, 4),
                           "nodes_before": len(before.graph.node),
                           "nodes_after": len(result.model.graph.node),
                           "stats": result.stats, "notes": result.notes, "sites": result.sites,
                           "tensor_map": result.tensor_map})
            for inst in self.instruments:
                inst.after_pass(step, pass_, before, result, record)
        except PassError as err:
            err.pass_name = err.pass_name or pass_.name
            message = f"pass {pass_.name!r} (step {step}, after {', '.join(ran) or 'nothing'}): {err}"
            if not self.skip_failing:
                report["passes"].append({**record, "failed": str(err)})
                raise PassError(message, pass_.name, report) from err
            log.warning("rolled back %s", message)
            record.update({"changed": False, "rolled_back": str(err),
                           "seconds": round(time.perf_counter() - start, 4)})
            report["passes"].append(record)
            return before
        report["passes"].append(record)
        return result.model

    @staticmethod
    def _apply(pass_, before, ctx):
        try:
            return pass_.run(clone(before), ctx)
        except (InputError, PassError):
            raise
        except GraphoptError as err:
            raise PassError(str(err), pass_.name) from err
        except Exception as err:
            raise PassError(f"raised {type(err).__name__}: {err}", pass_.name) from err
