"""Lossless simplification side by side: graphopt `cleanup,fuse` vs onnxslim, onnxoptimizer, onnxsim.

For every model in models/zoo.py (shipped digits models, cached ResNet-18/MobileNetV2/
encoder/MiniLM, the pip-shipped PP-OCR, magika, silero-vad and onnx backend models) each tool
simplifies the same file. Recorded per tool: node count (main graph), file size, seconds
taken, whether the output is checker-valid and preserves outputs (max error relative to
each output's max |value| <= 1e-5, or no more than onnxruntime's own ORT_ENABLE_ALL
optimizer moves that model), and onnxruntime latency with 1 intra-op thread under
ORT_ENABLE_BASIC and ORT_ENABLE_ALL: the median of interleaved runs (input, then each tool,
round after round, so drift in machine load hits all alike), as a ratio to the input's.

    python benchmarks/fuse.py [--models SUBSTR ...] [--rounds N] [--no-latency] [--out FILE]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt.passes import PassContext, create_pass  # noqa: E402
from graphopt.targets import load_target  # noqa: E402
from graphopt.api import synthesize_runnable_inputs  # noqa: E402
from graphopt.verify.compare import allclose_relative  # noqa: E402
from models import zoo  # noqa: E402

log = logging.getLogger("benchmarks.fuse")
LOSSLESS = 1e-5
MAX_BYTES = 400 * 2**20  # a tool output bigger than this is not timed (it bloated the file)


def run_graphopt(model: onnx.ModelProto) -> onnx.ModelProto:
    # target "cpu": onnxruntime's CPU EP, the runtime every latency here is measured in; it opts
    # into the com.microsoft contrib ops (Attention, FusedConv), as onnxsim's output does.
    ctx = PassContext(target=load_target("cpu"))
    for name in ("cleanup", "fuse"):
        model = create_pass(name).run(model, ctx).model
    return model


def run_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim
    return onnxslim.slim(model)


def run_onnxoptimizer(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxoptimizer
    return onnxoptimizer.optimize(model, onnxoptimizer.get_fuse_and_elimination_passes())


def run_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim
    out, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim check failed")
    return out


TOOLS = {"graphopt": run_graphopt, "onnxslim": run_onnxslim, "onnxoptimizer": run_onnxoptimizer,
         "onnxsim": run_onnxsim}


def compute_nodes(model: onnx.ModelProto) -> int:
    """Nodes that compute at run time: Constant and ConstantOfShape generators not counted."""
    return sum(n.op_type not in ("Constant", "ConstantOfShape") for n in model.graph.node)


def session(model: onnx.ModelProto, level, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def outputs(sess: ort.InferenceSession, feeds_list: list[dict]) -> list[list[np.ndarray]]:
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return [sess.run(names, {k: v for k, v in f.items() if k in wanted}) for f in feeds_list]


def relative_error(ref_runs, cand_runs) -> float:
    worst = 0.0
    for k in range(len(ref_runs[0])):
        refs = [np.asarray(r[k], np.float64) for r in ref_runs if np.asarray(r[k]).dtype.kind in "fc"]
        cands = [np.asarray(c[k], np.float64) for c in cand_runs if np.asarray(c[k]).dtype.kind in "fc"]
        if not refs:
            same = all(np.array_equal(r[k], c[k]) for r, c in zip(ref_runs, cand_runs))
            worst = max(worst, 0.0 if same else float("inf"))
            continue
        worst = max(worst, allclose_relative(refs, cands)[1])
    return worst


def median_latency(sessions: dict[str, ort.InferenceSession], feeds: dict, rounds: int) -> dict[str, float]:
    """Interleaved timing: each round runs every session once, in the same order."""
    times = {k: [] for k in sessions}
    for sess in sessions.values():  # warm-up
        wanted = {i.name for i in sess.get_inputs()}
        sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
    for _ in range(rounds):
        for key, sess in sessions.items():
            wanted = {i.name for i in sess.get_inputs()}
            start = time.perf_counter()
            sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(name: str, path: Path, tools: list[str], rounds: int, latency: bool) -> dict:
    original = onnx.load(str(path))
    row = {"model": name, "input": {"nodes": len(original.graph.node), "bytes": original.ByteSize(),
                                    "compute_nodes": compute_nodes(original)}}
    try:
        ref_sess = session(original, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    except Exception as err:  # e.g. an old BatchNormalization version onnxruntime lacks
        row["skipped"] = f"input does not load in onnxruntime: {str(err).splitlines()[0][-80:]}"
        return row
    feeds_list = synthesize_runnable_inputs(original, seed=0, count=2)  # grows dims until the model runs
    ref = outputs(ref_sess, feeds_list)
    ort_drift = relative_error(ref, outputs(session(original, ort.GraphOptimizationLevel.ORT_ENABLE_ALL), feeds_list))
    row["ort_drift"] = ort_drift
    models = {"input": original}
    for tool in tools:
        copy = onnx.ModelProto()
        copy.CopyFrom(original)
        start = time.perf_counter()
        try:
            out = TOOLS[tool](copy)
        except Exception as err:  # a tool failing on a model is a result, not a crash
            row[tool] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"}
            log.debug(traceback.format_exc())
            continue
        seconds = time.perf_counter() - start
        result = {"nodes": len(out.graph.node), "bytes": out.ByteSize(), "seconds": seconds,
                  "compute_nodes": compute_nodes(out)}
        try:
            onnx.checker.check_model(out) if out.ByteSize() < 2**31 else None
            result["valid"] = True
        except Exception:
            result["valid"] = False
        try:
            cand = outputs(session(out, ort.GraphOptimizationLevel.ORT_DISABLE_ALL), feeds_list)
            err = relative_error(ref, cand)
            result["rel_error"] = err
            result["preserved"] = err <= max(LOSSLESS, 1.01 * ort_drift)
        except Exception as exc:
            result["rel_error"], result["preserved"] = float("inf"), False
            result["error"] = f"does not run: {type(exc).__name__}"
        row[tool] = result
        if result.get("preserved") and out.ByteSize() <= MAX_BYTES:
            models[tool] = out
    if latency:
        for level_name, level in (("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                                  ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
            sessions = {k: session(m, level) for k, m in models.items()}
            lat = median_latency(sessions, feeds_list[0], rounds)
            for key, value in lat.items():
                target = row["input"] if key == "input" else row[key]
                target[f"latency_{level_name}_ms"] = value * 1e3
    return row


def bloated(row: dict, tool: str) -> bool:
    """The output file grew past 10x the input (and by over 1 MiB): generator weights were folded,
    which the lossless contract forbids (issue: a 9 KB VGG-19 must not become 513 MB)."""
    r, size = row.get(tool, {}), row["input"]["bytes"]
    return "bytes" in r and r["bytes"] > max(10 * size, size + 2**20)


def comparable(row: dict, tool: str) -> bool:
    r = row.get(tool)
    return isinstance(r, dict) and "nodes" in r and bool(r.get("preserved")) and not bloated(row, tool)


def fmt_tool(row: dict, tool: str, best: int) -> str:
    r = row.get(tool)
    if r is None:
        return "-"
    if "nodes" not in r:
        return f"fails ({r['error'][:40]})"
    mark = "**" if r["nodes"] == best and comparable(row, tool) else ""
    text = f"{mark}{r['nodes']}{mark} ({r['compute_nodes']})"
    if not r.get("preserved"):
        text += f" (outputs differ {r.get('rel_error', float('inf')):.1e})"
    if not r.get("valid", True):
        text += " (checker fails)"
    if bloated(row, tool):
        text += f" (file x{r['bytes'] / row['input']['bytes']:.0f})"
    return text


def latency_ratio(row: dict, tool: str, level: str) -> str:
    base = row["input"].get(f"latency_{level}_ms")
    value = row.get(tool, {}).get(f"latency_{level}_ms")
    return "-" if not base or value is None else f"{value / base:.2f}"


def markdown(rows: list[dict], tools: list[str], rounds: int, latency: bool) -> str:
    lines = ["# Lossless simplification: graphopt `cleanup,fuse` vs other tools", "",
             f"onnxruntime {ort.__version__}, onnx {onnx.__version__}; latency: 1 intra-op thread, "
             f"1 inter-op thread, median of {rounds} interleaved runs, batch from synthesized inputs. "
             "graphopt runs for the `cpu` target (onnxruntime CPU, which opts into com.microsoft contrib ops, "
             "as onnxsim's output uses them). "
             "Bold: fewest nodes among outputs that preserve the outputs and do not bloat the file; in brackets: "
             "nodes without Constant/ConstantOfShape generators (folding a generator into an initializer lowers the "
             "count but grows the file: '(file xN)' marks outputs over 10x the input's size, not counted for "
             "'fewest'). 'outputs differ': max error over each output's max |value| exceeds "
             "1e-5 and onnxruntime's own ORT_ENABLE_ALL drift on that model.", "",
             "## Node counts (main graph)", "",
             "| model | input | " + " | ".join(tools) + " |", "|---" * (len(tools) + 2) + "|"]
    skipped = [r for r in rows if "skipped" in r]
    rows = [r for r in rows if "skipped" not in r]
    for row in rows:
        counts = [row[t]["nodes"] for t in tools if comparable(row, t)]
        best = min(counts) if counts else -1
        lines.append(f"| {row['model']} | {row['input']['nodes']} ({row['input']['compute_nodes']}) | "
                     + " | ".join(fmt_tool(row, t, best) for t in tools) + " |")
    lines += ["", "## File size (KB) and seconds taken", "",
              "| model | input | " + " | ".join(tools) + " |", "|---" * (len(tools) + 2) + "|"]
    for row in rows:
        cells = []
        for t in tools:
            r = row.get(t, {})
            cells.append(f"{r['bytes'] / 1024:.0f} / {r['seconds']:.2f}s" if "bytes" in r else "-")
        lines.append(f"| {row['model']} | {row['input']['bytes'] / 1024:.0f} | " + " | ".join(cells) + " |")
    if latency:
        for level in ("basic", "all"):
            lines += ["", f"## Latency ratio to the input, ORT_ENABLE_{level.upper()} (lower is better)", "",
                      f"| model | input ms | " + " | ".join(tools) + " |", "|---" * (len(tools) + 2) + "|"]
            for row in rows:
                base = row["input"].get(f"latency_{level}_ms")
                lines.append(f"| {row['model']} | {base:.3f} | " if base else f"| {row['model']} | - | ")
                lines[-1] += " | ".join(latency_ratio(row, t, level) for t in tools) + " |"
    lines += ["", summary(rows, tools)]
    if skipped:
        lines += ["", "Not benchmarked (the input itself does not load in onnxruntime): "
                  + ", ".join(r["model"] for r in skipped)]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], tools: list[str]) -> str:
    ours = "graphopt"
    fewest = fewest_compute = broken = slower = 0
    for row in rows:
        counts = [row[t]["nodes"] for t in tools if comparable(row, t)]
        compute = [row[t]["compute_nodes"] for t in tools if isinstance(row.get(t), dict) and row[t].get("preserved")]
        mine = row.get(ours, {})
        if comparable(row, ours) and counts and mine["nodes"] <= min(counts):
            fewest += 1
        if mine.get("preserved") and compute and mine["compute_nodes"] <= min(compute):
            fewest_compute += 1
        if not mine.get("preserved"):
            broken += 1
        for level in ("basic", "all"):
            base, value = row["input"].get(f"latency_{level}_ms"), mine.get(f"latency_{level}_ms")
            if base and value and value > 1.10 * base:
                slower += 1
    ratios = [row[ours]["nodes"] / row["input"]["nodes"] for row in rows
              if row.get(ours, {}).get("nodes") and row["input"]["nodes"]]
    return (f"Summary: graphopt has the fewest nodes (or ties; outputs that bloat the file not counted) on "
            f"{fewest}/{len(rows)} models, the fewest "
            f"compute nodes on {fewest_compute}/{len(rows)}, "
            f"breaks {broken}, is >10% slower than the input at some level on {slower} model-levels; "
            f"median node ratio output/input {statistics.median(ratios):.2f}." if ratios else "Summary: no rows.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[], help="substrings of model names to keep")
    parser.add_argument("--tools", nargs="*", default=list(TOOLS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuse.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tools = [t for t in args.tools if t in TOOLS]
    rows = []
    for name, path in zoo.all_models(build=False).items():
        if args.models and not any(s in name for s in args.models):
            continue
        row = bench_model(name, Path(path), tools, args.rounds, not args.no_latency)
        rows.append(row)
        if "skipped" in row:
            print(f"{name}: skipped ({row['skipped']})")
            continue
        print(f"{name}: input {row['input']['nodes']} | " + " | ".join(
            f"{t} {row[t].get('nodes', 'fail')}{'' if row[t].get('preserved') else ' BROKEN ' + str(row[t].get('rel_error', row[t].get('error')))}"
            for t in tools), flush=True)
    text = markdown(rows, tools, args.rounds, not args.no_latency)
    Path(args.out).write_text(text)
    print(text.splitlines()[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
