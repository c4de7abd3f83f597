"""2:4 sparsity on the digits models: accuracy before/after pruning, graphopt vs Polygraphy.

For each bundled digits model (CNN, MLP, transformer after `cleanup` folds its
Transpose(weight) nodes) this runs, side by side:

* graphopt `sparsity-2to4` (mode=prune, magnitude 2:4 along the reduction axis), and
* Polygraphy's `surgeon prune` engine (`polygraphy.tools.sparse.SparsityPruner`), the
  tool an ONNX/TensorRT user would otherwise pick (it also zeroes the two smallest
  magnitudes of every four input-channel weights), or, when Polygraphy is not installed,
  a magnitude 2:4 mask computed in torch on the same weights.

It reports test accuracy (models/digits_test.npz, 450 samples, no fine-tuning), the number
of pruned tensors, how many weights differ between the two tools, prune time (median of
several runs), check_sparsity on graphopt's output, and the GPU target's latency estimate
dense vs annotated (the cost model credits sparse tensor cores only via the metadata).
Run: `OMP_NUM_THREADS=1 python benchmarks/sparsity_digits.py` (writes
benchmarks/results/sparsity.md).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.passes import PassContext, create_pass
from graphopt.sparsity_check import check_sparsity
from graphopt.targets import estimate_cost
from graphopt.verify.runner import make_session
from models import zoo

OUT = ROOT / "benchmarks" / "results" / "sparsity.md"
REPEATS = 5


def accuracy(model: onnx.ModelProto, data: dict) -> float:
    session = make_session(model, threads=1)
    logits = session.run(None, {session.get_inputs()[0].name: data["input"]})[0]
    return float(np.mean(np.argmax(logits.reshape(len(data["label"]), -1), axis=1) == data["label"]))


def timed(fn, repeats: int = REPEATS):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times) * 1e3


def graphopt_prune(model: onnx.ModelProto) -> onnx.ModelProto:
    return create_pass("sparsity-2to4").run(model, PassContext()).model


def other_tool_prune(model: onnx.ModelProto) -> tuple[str, onnx.ModelProto]:
    """Polygraphy's pruner when installed, else magnitude 2:4 computed in torch."""
    try:
        import polygraphy
        from polygraphy.logger import G_LOGGER
        from polygraphy.tools.sparse import SparsityPruner
    except ImportError:
        return "torch magnitude 2:4", torch_prune(model)
    G_LOGGER.severity = G_LOGGER.ERROR  # its per-tensor progress lines would drown the table
    return f"Polygraphy {polygraphy.__version__}", SparsityPruner(model).prune()


def torch_prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Same weights graphopt prunes, 2:4 mask from torch.topk over groups of 4 input channels."""
    import torch

    reference = graphopt_prune(model)
    meta = check_sparsity(reference)["tensors"]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in meta:
            w = torch.from_numpy(numpy_helper.to_array(tensor).copy())
            moved = w.movedim(meta[tensor.name]["axis"], -1)
            groups = moved.reshape(*moved.shape[:-1], -1, 4)
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, -1).indices, True)
            pruned = (groups * mask).reshape(moved.shape).movedim(-1, meta[tensor.name]["axis"])
            tensor.CopyFrom(numpy_helper.from_array(pruned.numpy(), tensor.name))
    return out


def differing_weights(a: onnx.ModelProto, b: onnx.ModelProto) -> tuple[int, int]:
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    common = [n for n in wa if n in wb and wa[n].shape == wb[n].shape]
    return sum(int(np.sum(wa[n] != wb[n])) for n in common), sum(wa[n].size for n in common)


def pruned_tensors(before: onnx.ModelProto, after: onnx.ModelProto) -> int:
    old = {t.name: numpy_helper.to_array(t) for t in before.graph.initializer}
    return sum(1 for t in after.graph.initializer
               if t.name in old and not np.array_equal(old[t.name], numpy_helper.to_array(t)))


def bench_model(name: str, model: onnx.ModelProto, data: dict) -> dict:
    pruned, ours_ms = timed(lambda: graphopt_prune(model))
    (tool, theirs), theirs_ms = timed(lambda: other_tool_prune(model), repeats=3)
    diff, total = differing_weights(pruned, theirs)
    gpu_dense = estimate_cost(model, "gpu")["latency_ms"]
    gpu_sparse = estimate_cost(pruned, "gpu")["latency_ms"]
    return {"model": name, "tool": tool, "acc_dense": accuracy(model, data), "acc_ours": accuracy(pruned, data),
            "acc_theirs": accuracy(theirs, data), "tensors_ours": pruned_tensors(model, pruned),
            "tensors_theirs": pruned_tensors(model, theirs), "differ": diff, "total": total,
            "ours_ms": ours_ms, "theirs_ms": theirs_ms, "check_ok": check_sparsity(pruned).get("ok"),
            "gpu_dense": gpu_dense, "gpu_sparse": gpu_sparse}


def resnet_cost_row() -> str:
    """ResNet-18 (224, untrained weights): prune time and the GPU estimate dense vs 2:4."""
    try:
        model = onnx.load(zoo.resnet18())
    except Exception as err:  # optional: torch builds it on first use
        return f"ResNet-18 skipped: {err}"
    pruned, ms = timed(lambda: graphopt_prune(model), repeats=3)
    dense, sparse = estimate_cost(model, "gpu")["latency_ms"], estimate_cost(pruned, "gpu")["latency_ms"]
    tensors = len(check_sparsity(pruned)["tensors"])
    return (f"ResNet-18 224x224 (untrained weights, cost only): graphopt prunes {tensors} tensors in {ms:.0f} ms; "
            f"GPU estimate {dense:.3f} ms dense -> {sparse:.3f} ms 2:4 (x{dense / sparse:.2f}). "
            f"Polygraphy's pure-Python pruner was not timed on it. The model is fp32 and the `gpu` target has no "
            f"sparse path for fp32 (CUDA cores), so no gain is credited; for fp16 the same cost model gives "
            f"{_fp16_gemm()}.")


def _fp16_gemm() -> str:
    from graphopt.targets import load_target, matmul_latency_ms

    gpu = load_target("gpu")
    dense = matmul_latency_ms(gpu, 4096, 4096, 4096, dtype="fp16")
    sparse = matmul_latency_ms(gpu, 4096, 4096, 4096, dtype="fp16", sparse=True)
    return f"a 4096^3 GEMM {dense:.3f} ms dense -> {sparse:.3f} ms 2:4 (x{dense / sparse:.2f})"


def main() -> int:
    data = zoo.digits_data("test")
    cleanup = create_pass("cleanup")
    models = {"digits_cnn": onnx.load(zoo.digits_cnn()), "digits_mlp": onnx.load(zoo.digits_mlp()),
              "digits_transformer (after cleanup)":
                  cleanup.run(onnx.load(zoo.digits_transformer()), PassContext()).model}
    rows = [bench_model(name, model, data) for name, model in models.items()]
    tool = rows[0]["tool"]
    lines = ["# 2:4 sparsity on the digits models (benchmarks/sparsity_digits.py)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs (shared); onnxruntime 1 intra-op thread, "
             f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}. Data: models/digits_test.npz (450 samples). "
             f"No fine-tuning after pruning. Other tool: {tool} (`surgeon prune` engine). Times: median wall ms "
             f"of {REPEATS} (graphopt) / 3 (other) runs. GPU: graphopt's `gpu` target estimate (A100-like); the "
             "sparse figure credits 2:4 tensor cores for tensors recorded in the `graphopt.sparsity` metadata.", "",
             f"| model | acc dense | acc graphopt 2:4 | acc {tool} | tensors pruned (graphopt / other) | "
             "weights differing | prune ms graphopt | prune ms other | speed ratio | check | GPU est. ms dense -> 2:4 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['acc_dense']:.4f} | {r['acc_ours']:.4f} | {r['acc_theirs']:.4f} | "
                     f"{r['tensors_ours']} / {r['tensors_theirs']} | {r['differ']} of {r['total']} | "
                     f"{r['ours_ms']:.1f} | {r['theirs_ms']:.1f} | x{r['theirs_ms'] / r['ours_ms']:.1f} | "
                     f"{'ok' if r['check_ok'] else 'FAIL'} | {r['gpu_dense']:.4f} -> {r['gpu_sparse']:.4f} |")
    lines += ["", resnet_cost_row(), ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
