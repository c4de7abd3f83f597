"""Long fuzz run of `graphopt optimize` outside the default test run.

    python benchmarks/fuzz_long.py --cases 5000 [--seed 0] [--out benchmarks/results/fuzz.md]

Case i uses RngChooser(seed * 1_000_003 + i), so any case is reproducible alone
(`--only I`). A case is one of: a random valid graph, a mutated real model (shipped digits
models, PP-OCR cls, silero-vad, magika, onnx backend models where installed), or a
mutated random graph; a pipeline from fuzz_strategies.PIPELINES; a target. Properties are
those of fuzz_strategies.run_case. Findings are grouped by a normalized message, the
first model of each group is saved to benchmarks/cache/fuzz/, and a Markdown summary
goes to --out.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fuzz_strategies import PIPELINES, Finding, RngChooser, mutate, random_graph, run_case  # noqa: E402

TARGETS = ("cpu", "gpu", "npu", "mcu")
KINDS = ("random_graph", "mutated_real", "mutated_random")
CACHE = ROOT / "benchmarks" / "cache" / "fuzz"
CASE_TIMEOUT_S = 120


def real_models() -> dict[str, bytes]:
    from models import zoo

    found = {}
    for make in (zoo.digits_cnn, zoo.digits_mlp, zoo.digits_transformer, zoo.ppocr_cls, zoo.silero_vad, zoo.magika):
        try:
            found[make.__name__] = make().read_bytes()
        except FileNotFoundError:
            pass
    for name, path in zoo.onnx_backend_models(include_light=False).items():
        found[f"backend/{name}"] = path.read_bytes()
    return found


def make_case(index: int, seed: int, models: dict[str, bytes]) -> tuple[str, str, bytes, str, str]:
    """(kind, source description, model bytes, pipeline, target) of case `index`."""
    c = RngChooser(seed * 1_000_003 + index)
    kind = c.pick(KINDS)
    if kind == "random_graph":
        data, source = random_graph(c).SerializeToString(), "random graph"
    elif kind == "mutated_real":
        name = c.pick(sorted(models))
        data, applied = mutate(models[name], c)
        source = f"{name} + {'+'.join(applied)}"
    else:
        data, applied = mutate(random_graph(c).SerializeToString(), c)
        source = f"random graph + {'+'.join(applied)}"
    return kind, source, data, c.pick(PIPELINES), c.pick(TARGETS)


def signature(message: str) -> str:
    """Group findings: drop paths, quoted names and numbers."""
    text = re.sub(r"/\S+", "PATH", message)
    text = re.sub(r"'[^']*'", "'…'", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)[:160]


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run(cases: int, seed: int, only: int | None = None, start_at: int = 0, trace: bool = False) -> dict:
    models = real_models()
    counts = {k: collections.Counter() for k in KINDS}
    findings: dict[str, dict] = {}
    signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    indices = [only] if only is not None else range(start_at, start_at + cases)
    with tempfile.TemporaryDirectory() as tmp:
        for n, i in enumerate(indices, 1):
            kind, source, data, pipeline, target = make_case(i, seed, models)
            if trace:
                print(f"case {i}: {source} | {pipeline}", file=sys.stderr, flush=True)
            signal.alarm(CASE_TIMEOUT_S)
            try:
                outcome = run_case(data, pipeline, Path(tmp), ("--target", target))
                counts[kind][f"exit {outcome['code']}"] += 1
            except Finding as found:
                counts[kind][found.kind] += 1
                _record(findings, found.kind, found.message, i, source, pipeline, data)
            except _Timeout:
                counts[kind]["timeout"] += 1
                _record(findings, "timeout", f"over {CASE_TIMEOUT_S} s", i, source, pipeline, data)
            finally:
                signal.alarm(0)
            if n % 250 == 0:
                print(f"{n}/{len(indices)} cases, {time.perf_counter() - start:.0f} s, "
                      f"{sum(f['count'] for f in findings.values())} findings", file=sys.stderr, flush=True)
    return {"cases": len(indices), "seed": seed, "seconds": time.perf_counter() - start, "counts": counts,
            "findings": findings, "models": sorted(models)}


def _record(findings, kind, message, index, source, pipeline, data) -> None:
    key = f"{kind}: {signature(message)}"
    if key not in findings:
        CACHE.mkdir(parents=True, exist_ok=True)
        saved = CACHE / f"finding_{len(findings):02d}_case{index}.onnx"
        saved.write_bytes(data)
        findings[key] = {"count": 0, "case": index, "source": source, "pipeline": pipeline,
                         "message": message[:400], "saved": str(saved.relative_to(ROOT))}
    findings[key]["count"] += 1


def render(result: dict) -> str:
    from graphopt import __version__

    totals = collections.Counter()
    for counter in result["counts"].values():
        totals.update(counter)
    columns = ["exit 0", "exit 1", "exit 2"] + sorted(k for k in totals if k not in ("exit 0", "exit 1", "exit 2"))
    lines = [
        "# Long fuzz run of `graphopt optimize`", "",
        f"graphopt {__version__}; {result['cases']} cases, seed {result['seed']}, "
        f"{result['seconds']:.0f} s wall on 1 process, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
        f"run: `python benchmarks/fuzz_long.py --cases {result['cases']} --seed {result['seed']}`.", "",
        "Properties per case: exit code in {0,1,2} without a traceback, exit 1 prints one error line, "
        "the input file is unchanged, only exit 0 writes a model, which passes onnx.checker and verifies "
        "against its input (1e-5 relative for lossless pipelines, cosine >= 0.99 for lossy ones).", "",
        f"Pipelines: {', '.join(f'`{p}`' for p in PIPELINES)}; targets cpu/gpu/npu/mcu.", "",
        f"Real models mutated: {', '.join(result['models'])}.", "",
        "| case kind | cases | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for kind, counter in result["counts"].items():
        lines.append(f"| {kind} | {sum(counter.values())} | " + " | ".join(str(counter.get(c, 0)) for c in columns) + " |")
    lines.append(f"| **all** | {sum(totals.values())} | " + " | ".join(str(totals.get(c, 0)) for c in columns) + " |")
    crashes = totals.get("crash", 0)
    invalid = totals.get("invalid_output", 0) + totals.get("unverified_output", 0)
    lines += ["", f"Tracebacks / crashes: **{crashes}**. Invalid or unverified outputs written: **{invalid}**. "
              f"Exit 3 (a pass refused by the pass manager, no output written): **{totals.get('exit3', 0)}**.", ""]
    if result["findings"]:
        lines += ["## Findings (grouped)", "", "| kind: signature | count | first case | source | pipeline | saved model |",
                  "|---|---|---|---|---|---|"]
        for key, f in sorted(result["findings"].items(), key=lambda kv: -kv[1]["count"]):
            lines.append(f"| {key.replace('|', '/')} | {f['count']} | {f['case']} | {f['source']} | `{f['pipeline']}` | "
                         f"{f['saved']} |")
        lines += ["", "First message of each group:", ""]
        for key, f in result["findings"].items():
            lines.append(f"- case {f['case']}: {f['message'].replace(chr(10), ' ')}")
    lines += ["", "## Not covered", "",
              "- Resource exhaustion by valid-but-huge work: attribute mutations are bounded (|value| <= 64); "
              "a Conv pad of 2**20 makes a legal model whose verification runs for minutes (no per-run "
              "time limit in graphopt.verify yet). The run sets an address-space limit (--memory-gb, 4) so "
              "such a case fails instead of swapping the machine.",
              "- Cases run in one process; a crash inside onnxruntime's C++ would end the run (none seen)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, help="run just this case index (reproduce a finding)")
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--trace", action="store_true", help="print each case before running it")
    parser.add_argument("--memory-gb", type=float, default=4.0,
                        help="address-space limit: a case that tries to allocate more fails instead of swapping the box")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz.md"))
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # passes' advisory warnings would flood the log
    import resource

    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = run(args.cases, args.seed, args.only, args.start, args.trace)
    text = render(result)
    if args.only is None:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
