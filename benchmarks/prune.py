"""prune-channels benchmark: accuracy vs ratio, MACs and measured latency vs the tools users pick.

1. digits CNN (trained, models/digits_test.npz, 450 images): test accuracy without
   fine-tuning vs ratio for graphopt l1 / l2 / activation (64 calibration images), beside
   unstructured magnitude masking of the same fraction of conv weights (the usual
   "prune" without a structured tool: zeros, no smaller model).
2. ResNet-18 and MobileNetV2 (models/zoo.py, plain torch, seeded random weights, 112 px):
   MACs, params and onnxruntime latency (1 intra-op thread, graph optimizations ALL,
   medians of interleaved rounds; CPU time of the calling thread, wall time beside) of the
   unpruned model, graphopt prune-channels, torch-pruning's DepGraph (MagnitudePruner,
   L1 group importance, same ratio, classifier ignored) on the same torch weights, and
   50% unstructured magnitude masking.

Run: OMP_NUM_THREADS=1 python benchmarks/prune.py [--rounds 15] [--quick]
Writes benchmarks/results/prune.md.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphopt.passes import PassContext, create_pass  # noqa: E402
from graphopt.targets import estimate_cost  # noqa: E402
from models import zoo  # noqa: E402

CACHE = ROOT / "benchmarks" / "cache"


def prune(model, feeds=None, **options):
    result = create_pass("prune-channels", options).run(model, PassContext(calibration_data=feeds))
    return result.model


def magnitude_mask(model: onnx.ModelProto, ratio: float) -> onnx.ModelProto:
    """Unstructured: zero the smallest |w| of each Conv / Gemm / MatMul weight (same shapes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {n.input[1] for n in out.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    for t in out.graph.initializer:
        if t.name in weights:
            w = numpy_helper.to_array(t).copy()
            w[np.abs(w) <= np.quantile(np.abs(w), ratio)] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return out


def session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def accuracy(model, data) -> float:
    logits = session(model).run(None, {"input": data["input"]})[0]
    return float(np.mean(logits.argmax(1) == data["label"]))


def digits_table(ratios) -> list[str]:
    model = onnx.load(str(zoo.digits_cnn()))
    test, calib = zoo.digits_data("test"), zoo.digits_data("calib")
    feeds = [{"input": calib["input"]}]
    rows = ["| ratio | l1 acc | l2 acc | activation acc | MACs left "
            "| unstructured mask acc (same fraction, MACs 100%) |",
            "|---:|---:|---:|---:|---:|---:|"]
    macs0 = estimate_cost(model, "cpu")["macs"]
    for r in ratios:
        accs = [accuracy(prune(model, feeds, ratio=r, criterion=c) if r else model, test)
                for c in ("l1", "l2", "activation")]
        macs = estimate_cost(prune(model, ratio=r) if r else model, "cpu")["macs"]
        masked = accuracy(magnitude_mask(model, r), test)
        rows.append(f"| {r:.2f} | {accs[0]:.4f} | {accs[1]:.4f} | {accs[2]:.4f} | {macs / macs0:.1%} | {masked:.4f} |")
    return rows


def torch_pruning_onnx(name: str, ratio: float, size: int) -> "onnx.ModelProto | str":
    """The same seeded torch model pruned by torch-pruning (DepGraph), exported to ONNX."""
    try:
        import torch
        import torch_pruning as tp
    except ImportError as err:
        return f"torch-pruning not installed ({err})"
    from models import torch_nets
    net = torch_nets.randomize(torch_nets.ResNet18() if name == "resnet18" else torch_nets.MobileNetV2(), 0)
    example = torch.zeros(1, 3, size, size)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    pruner = tp.pruner.MagnitudePruner(net, example, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=head)
    pruner.step()
    buf = io.BytesIO()
    torch.onnx.export(net.eval(), (example,), buf, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], do_constant_folding=False)
    return onnx.load_from_string(buf.getvalue())


def time_models(models: dict, x, rounds: int, per_round: int = 3) -> dict:
    """Interleaved rounds: every variant runs `per_round` times per round; medians."""
    feeds = x if isinstance(x, dict) else {"input": x}
    sessions = {k: session(m) for k, m in models.items()}
    cpu = {k: [] for k in models}
    wall = {k: [] for k in models}
    for s in sessions.values():
        s.run(None, feeds)  # warm up
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(per_round):
                w0, c0 = time.perf_counter(), time.thread_time()
                s.run(None, feeds)
                cpu[k].append(time.thread_time() - c0)
                wall[k].append(time.perf_counter() - w0)
    return {k: (statistics.median(cpu[k]) * 1e3, statistics.median(wall[k]) * 1e3) for k in models}


def cosine(a, b) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def cnn_table(name: str, ratio: float, rounds: int, size: int = 112) -> list[str]:
    path = zoo.resnet18(size) if name == "resnet18" else zoo.mobilenetv2(size)
    base = onnx.load(str(path))
    t0 = time.perf_counter()
    ours = prune(base, ratio=ratio)
    seconds = time.perf_counter() - t0
    variants = {"unpruned": base, f"graphopt prune-channels ratio={ratio}": ours}
    tp_model = torch_pruning_onnx(name, ratio, size)
    if isinstance(tp_model, str):
        note = tp_model
    else:
        variants[f"torch-pruning DepGraph L1 ratio={ratio}"] = tp_model
        note = ""
    variants[f"unstructured magnitude mask {ratio:.0%}"] = magnitude_mask(base, ratio)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    times = time_models(variants, x, rounds)
    ref = session(base).run(None, {"input": x})[0]
    rows = [f"### {name} ({size}x{size}, batch 1) — graphopt pass took {seconds:.1f} s", "",
            "| variant | MMACs | MACs left | params (M) | CPU ms | wall ms | latency vs unpruned "
            "| cosine to unpruned |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    macs0 = estimate_cost(base, "cpu")["macs"]
    for k, m in variants.items():
        cost = estimate_cost(m, "cpu")
        out = session(m).run(None, {"input": x})[0]
        rows.append(f"| {k} | {cost['macs'] / 1e6:.1f} | {cost['macs'] / macs0:.1%} | {cost['params'] / 1e6:.2f} "
                    f"| {times[k][0]:.2f} | {times[k][1]:.2f} | {times[k][0] / times['unpruned'][0]:.2f}x "
                    f"| {cosine(ref, out):.4f} |")
    if note:
        rows.append(f"\n{note}")
    return rows + [""]


def transformer_table(rounds: int) -> list[str]:
    """Encoder block (heads + FFN prunable) and MiniLM (FFN prunable; the heads meet the
    attention mask, whose head axis shape inference cannot prove broadcast, so they stay)."""
    rng = np.random.default_rng(0)
    cases = {"encoder_block (seq 16)": (zoo.encoder_block(), {
                 "hidden": rng.standard_normal((1, 16, 128)).astype(np.float32),
                 "mask": np.ones((1, 16), np.int64)}),
             "all-MiniLM-L6-v2 (seq 64)": (zoo.minilm(), {
                 "input_ids": rng.integers(1000, 20000, (1, 64)).astype(np.int64),
                 "attention_mask": np.ones((1, 64), np.int64)})}
    rows = ["| model | variant | groups pruned (unit) | MMACs | params (M) | CPU ms | wall ms | latency vs unpruned |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, (path, feeds) in cases.items():
        base = onnx.load(str(path))
        result = create_pass("prune-channels", {"ratio": 0.5}).run(base, PassContext())
        variants = {"unpruned": base, "graphopt ratio=0.5": result.model}
        times = time_models(variants, feeds, rounds)
        kinds = [f"{'heads' if r['unit_channels'] > 1 else 'units'} {r['channels_before']}->{r['channels_after']}"
                 for r in result.stats["groups"]]
        units = ", ".join(f"{kinds.count(k)} x {k}" for k in dict.fromkeys(kinds))
        for k, m in variants.items():
            cost = estimate_cost(m, "cpu", input_shapes={n: list(v.shape) for n, v in feeds.items()})
            rows.append(f"| {name} | {k} | {units if k != 'unpruned' else ''} | {cost['macs'] / 1e6:.2f} "
                        f"| {cost['params'] / 1e6:.3f} | {times[k][0]:.2f} | {times[k][1]:.2f} "
                        f"| {times[k][0] / times['unpruned'][0]:.2f}x |")
    return rows + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and ratios")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    try:
        import torch_pruning
        tp_version = torch_pruning.__version__
    except ImportError:
        tp_version = "not installed"
    lines = ["# prune-channels benchmark (benchmarks/prune.py)", "",
             f"Machine: {platform.machine()}, shared CPU; onnxruntime {ort.__version__}, CPUExecutionProvider, "
             f"1 intra-op thread, graph optimizations ALL; torch-pruning {tp_version}; {rounds} interleaved "
             "rounds x 3 runs, medians. CPU ms = CPU time of the calling thread per run (robust to other jobs "
             "on the box), wall ms beside. No fine-tuning anywhere; the ResNet/MobileNet weights are random, so "
             "their 'cosine to unpruned' only shows how much the output moved.", "",
             "## digits CNN: test accuracy (450 images) vs ratio, no fine-tuning", ""]
    lines += digits_table([0.0, 0.125, 0.25, 0.5] if args.quick else [0.0, 0.0625, 0.125, 0.25, 0.375, 0.5, 0.75])
    lines += ["", "## ResNet-18 / MobileNetV2: MACs and measured latency", ""]
    for name in ("resnet18", "mobilenetv2"):
        lines += cnn_table(name, 0.5, rounds)
    lines += ["## Transformers: attention heads and FFN units (no torch-pruning run: it needs the torch model)", ""]
    lines += transformer_table(rounds)
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "results" / "prune.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
