"""Benchmark: calibration + quantization cost and accuracy, graphopt vs onnxruntime.quantization.

ResNet-18 (models/zoo, random seeded weights) at 224x224, BatchNorm folded first by
onnxruntime's basic offline optimization (as benchmarks/quantize.py does), calibrated on
natural-image crops: random crops/flips of scikit-learn's two sample photographs resized
to 224 and normalised with the ImageNet mean/std, the same arrays for both tools.

Each quantization (calibration + QDQ rewrite + save) runs in its own fresh subprocess so
that wall time and peak RSS (VmHWM of that child) are its own. Imports of graphopt /
onnxruntime.quantization happen before the clock in both; the baseline RSS after imports
is reported too. Runs are interleaved (graphopt, ORT, ORT, graphopt, ...) so that noise
of this shared machine hits both tools alike; the table shows medians and ratios.

onnxruntime: quantize_static, QDQ, per_channel, QUInt8 activations, QInt8 weights,
CalibNumBins=2048 for entropy/percentile, CalibPercentile=99.999 (and graphopt
percentile=99.999, num_bins=2048). Accuracy: ResNet-18 output cosine vs float on
held-out crops (min and mean), digits CNN test accuracy (same methods, both tools).

Usage: python benchmarks/calibration.py [--runs 3] [--samples 64] [--batch 8] [--scaling 128]
                                        [--methods minmax,entropy,percentile] [--no-write]
(--scaling N adds one entropy run per tool on N samples: time and peak vs sample count)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / "cache" / "calibration"
RESULTS = ROOT / "benchmarks" / "results" / "calibration.md"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
EVAL_SAMPLES = 16
PERCENTILE = 99.999
BINS = 2048


# ------------------------------------------------------------------ inputs
def fold_bn(src: Path, dst: Path) -> Path:
    if not dst.exists():
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst


def model_path(name: str, size: int) -> Path:
    from models import zoo

    CACHE.mkdir(parents=True, exist_ok=True)
    if name == "digits_cnn":
        return fold_bn(zoo.digits_cnn(), CACHE / "digits_cnn_folded.onnx")
    return fold_bn(zoo.resnet18(size), CACHE / f"resnet18_{size}_folded.onnx")


def crops(count: int, size: int, seed: int) -> np.ndarray:
    """[count, 3, size, size] float32: random crops / flips of the sklearn sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), np.float32)
    for k in range(count):
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = Image.fromarray(img[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        arr = np.asarray(patch, np.float32).transpose(2, 0, 1) / 255.0
        if rng.random() < 0.5:
            arr = arr[:, :, ::-1]
        out[k] = (arr - MEAN) / STD
    return out


def data_path(samples: int, size: int) -> Path:
    path = CACHE / f"crops_{size}_{samples}.npz"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path, calib=crops(samples, size, seed=0), eval=crops(EVAL_SAMPLES, size, seed=1))
    return path


def batches(x: np.ndarray, batch: int) -> list[dict[str, np.ndarray]]:
    return [{"input": np.ascontiguousarray(x[i:i + batch])} for i in range(0, len(x), batch)]


def calib_feeds(name: str, data: str, batch: int) -> list[dict[str, np.ndarray]]:
    if name == "digits_cnn":
        from models import zoo

        return batches(zoo.digits_data("calib")["input"], batch)
    with np.load(data) as z:
        return batches(z["calib"], batch)


# ------------------------------------------------------------------ one quantization
def peak_mb() -> float:
    """Peak RSS of this process image (VmHWM): unlike ru_maxrss it is not inherited from
    the parent across fork + exec, so a child's figure is its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def feeds_reader(oq, feeds):
    """onnxruntime's CalibrationDataReader over a list of feed dicts."""
    class Reader(oq.CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    return Reader()


def ort_with_bins(oq, bins: int):
    """quantize_static(extra_options=CalibNumBins) is not passed on to the calibrator in
    onnxruntime 1.32 (entropy stays at 128 bins): hand num_bins to create_calibrator."""
    import importlib

    qmod = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not the function
    original = qmod.create_calibrator

    def create(*args, extra_options=None, **kwargs):
        return original(*args, extra_options={**(extra_options or {}), "num_bins": bins}, **kwargs)

    qmod.create_calibrator = create


def worker(tool: str, name: str, method: str, src: str, data: str, batch: int, out: str) -> None:
    """Quantize in this process; print {"seconds", "peak_mb", "base_mb"} as JSON."""
    feeds = calib_feeds(name, data, batch)
    if tool == "graphopt":
        from graphopt.passes import PassContext, create_pass, registry

        registry()  # every pass module imported before the clock, as ORT's import is too
    else:
        from onnxruntime import quantization as oq
    onnx.defs.get_schema("Relu")  # onnx's schema registry, built by onnxruntime.quantization's import too
    base = peak_mb()
    t0 = time.perf_counter()
    if tool == "graphopt":
        options = {"calibration": method, "num_bins": BINS, "percentile": PERCENTILE}
        result = create_pass("quantize", options).run(onnx.load(src), PassContext(calibration_data=feeds))
        onnx.save(result.model, out)
    else:
        methods = {"minmax": oq.CalibrationMethod.MinMax, "percentile": oq.CalibrationMethod.Percentile,
                   "entropy": oq.CalibrationMethod.Entropy}
        extra = {} if method == "minmax" else {"CalibPercentile": PERCENTILE}
        if method != "minmax":
            ort_with_bins(oq, BINS)
        oq.quantize_static(src, out, feeds_reader(oq, feeds), quant_format=oq.QuantFormat.QDQ, per_channel=True,
                           activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
                           calibrate_method=methods[method], extra_options=extra)
    seconds = time.perf_counter() - t0
    peak = peak_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": base}))


def quantize(tool, name, method, src, data, batch) -> dict:
    out = CACHE / f"{name}_{tool}_{method}.onnx"
    proc = subprocess.run([sys.executable, __file__, "--worker", tool, name, method, str(src), str(data),
                           str(batch), str(out)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "failed"
        raise RuntimeError(f"{tool} {method} on {name}: {tail}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["path"] = out
    return info


# ------------------------------------------------------------------ accuracy
def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def resnet_cosine(ref: Path, cand: Path, data: Path) -> tuple[float, float]:
    with np.load(data) as z:
        x = z["eval"]
    a = session(ref).run(None, {"input": x})[0]
    b = session(cand).run(None, {"input": x})[0]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min()), float(cos.mean())


def digits_scores(path: Path, ref: Path) -> tuple[float, float, float]:
    """(test accuracy %, top-1 agreement with the float model %, mean logit cosine vs float)."""
    from models import zoo

    test = zoo.digits_data("test")
    out = session(path).run(None, {"input": test["input"]})[0]
    base = session(ref).run(None, {"input": test["input"]})[0]
    cos = (out * base).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(base, axis=1)
    return (float((out.argmax(1) == test["label"]).mean() * 100),
            float((out.argmax(1) == base.argmax(1)).mean() * 100), float(cos.mean()))


# ------------------------------------------------------------------ driver
def measure(methods, runs, src, data, batch) -> dict:
    """{(tool, method): [run info, ...]}, tools alternating first so drift hits both."""
    got: dict = {}
    for r in range(runs):
        for m in methods:
            order = ("graphopt", "ort") if (r + methods.index(m)) % 2 == 0 else ("ort", "graphopt")
            for tool in order:
                info = quantize(tool, "resnet18", m, src, data, batch)
                got.setdefault((tool, m), []).append(info)
                print(f"run {r} {m:10s} {tool:8s} {info['seconds']:6.2f} s {info['peak_mb']:6.0f} MB "
                      f"(base {info['base_mb']:.0f} MB)", flush=True)
    return got


def table(got, methods, src, data) -> list[str]:
    med = lambda xs: float(np.median(xs))
    lines = ["| method | graphopt s | ORT s | time ratio | graphopt peak MB | ORT peak MB | memory ratio "
             "| cosine min/mean graphopt | cosine min/mean ORT |", "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        g, o = got[("graphopt", m)], got[("ort", m)]
        gs, os_ = med([i["seconds"] for i in g]), med([i["seconds"] for i in o])
        gm, om = med([i["peak_mb"] for i in g]), med([i["peak_mb"] for i in o])
        gc, oc = resnet_cosine(src, g[-1]["path"], data), resnet_cosine(src, o[-1]["path"], data)
        lines.append(f"| {m} | {gs:.2f} | {os_:.2f} | {gs / os_:.2f} | {gm:.0f} | {om:.0f} | {gm / om:.2f} "
                     f"| {gc[0]:.4f} / {gc[1]:.4f} | {oc[0]:.4f} / {oc[1]:.4f} |")
    return lines


def inference_floor(src: Path, data: Path, batch: int, rounds: int = 3) -> tuple[float, float]:
    """Seconds to run the float model over the calibration set: fully optimized
    (ORT_ENABLE_ALL, no extra outputs) and as onnxruntime's calibrator runs its augmented
    copy (ORT_DISABLE_ALL); medians of interleaved rounds. No calibration can run its
    data faster than the first."""
    with np.load(data) as z:
        feeds, singles = batches(z["calib"], batch), batches(z["calib"], 1)
    sessions = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        sessions.append(ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]))
    # optimized at the given batch and one sample a run (what graphopt does), ORT's way
    plan = [(sessions[0], feeds), (sessions[0], singles), (sessions[1], feeds)]
    times = [[] for _ in plan]
    for _ in range(rounds):
        for k, (s, fs) in enumerate(plan):
            t = time.perf_counter()
            for f in fs:
                s.run(None, f)
            times[k].append(time.perf_counter() - t)
    med = [float(np.median(t)) for t in times]
    return min(med[0], med[1]), med[2]


def digits_table(methods) -> list[str]:
    src = model_path("digits_cnn", 0)
    lines = ["| method | accuracy % graphopt | accuracy % ORT | top-1 = float % graphopt | top-1 = float % ORT "
             "| logit cosine graphopt | logit cosine ORT |", "|---|---|---|---|---|---|---|",
             f"| float | {digits_scores(src, src)[0]:.2f} | | | | | |"]
    for m in methods:
        g, o = (digits_scores(quantize(t, "digits_cnn", m, src, "", 64)["path"], src) for t in ("graphopt", "ort"))
        lines.append(f"| {m} | {g[0]:.2f} | {o[0]:.2f} | {g[1]:.2f} | {o[1]:.2f} | {g[2]:.5f} | {o[2]:.5f} |")
    return lines


def scaling_table(samples: int, more: int, size: int, batch: int, got: dict) -> list[str]:
    """Entropy at `more` samples (one run per tool) next to the medians at `samples`:
    onnxruntime keeps every exposed tensor of every batch, graphopt streams."""
    src, data = model_path("resnet18", size), data_path(more, size)
    runs = {t: quantize(t, "resnet18", "entropy", src, data, batch) for t in ("graphopt", "ort")}
    med = {t: (float(np.median([i["seconds"] for i in got[(t, "entropy")]])),
               float(np.median([i["peak_mb"] for i in got[(t, "entropy")]]))) for t in ("graphopt", "ort")}
    lines = [f"Entropy ({BINS} bins) as the calibration set grows (one run each at {more} samples):", "",
             "| samples | graphopt s | ORT s | graphopt peak MB | ORT peak MB |", "|---|---|---|---|---|",
             f"| {samples} | {med['graphopt'][0]:.2f} | {med['ort'][0]:.2f} | {med['graphopt'][1]:.0f} "
             f"| {med['ort'][1]:.0f} |",
             f"| {more} | {runs['graphopt']['seconds']:.2f} | {runs['ort']['seconds']:.2f} "
             f"| {runs['graphopt']['peak_mb']:.0f} | {runs['ort']['peak_mb']:.0f} |"]
    return lines


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--worker":
        tool, name, method, src, data, batch, out = argv[1:8]
        worker(tool, name, method, src, data, int(batch), out)
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--methods", default="minmax,entropy,percentile")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--digits-only", action="store_true")
    ap.add_argument("--scaling", type=int, default=0,
                    help="also run entropy once per tool on this many samples (memory vs sample count)")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    if args.digits_only:
        print("\n".join(digits_table(methods)))
        return 0
    src, data = model_path("resnet18", args.size), data_path(args.samples, args.size)
    got = measure(methods, args.runs, src, data, args.batch)
    fast, plain = inference_floor(src, data, args.batch)
    lines = [f"# calibration benchmark: graphopt vs onnxruntime.quantization.quantize_static", "",
             f"ResNet-18 (random weights, BN folded) at {args.size}x{args.size}, {args.samples} calibration samples "
             f"in batches of {args.batch} (natural-image crops), {args.runs} runs per tool and method, each in a "
             f"fresh subprocess; medians. onnxruntime {ort.__version__}, default intra-op threads on this "
             "2-core machine (shared with other work: absolute times are noisy, ratios come from interleaved "
             "runs). Time = load + calibrate + rewrite + save (imports and onnx's schema registry before the clock for both); peak = VmHWM of the child (imports and data included, "
             f"~{np.median([i['base_mb'] for v in got.values() for i in v]):.0f} MB after imports). "
             f"Histogram methods: {BINS} bins for both; percentile {PERCENTILE}.", "",
             *table(got, methods, src, data), "",
             f"Cosine: ResNet-18 output vs float on {EVAL_SAMPLES} held-out crops.", "",
             f"Inference floor (same data, float model, no statistics, interleaved medians): {fast:.2f} s fully "
             f"optimized (ORT_ENABLE_ALL), {plain:.2f} s at ORT_DISABLE_ALL as onnxruntime's calibrator runs it "
             f"(ratio {fast / plain:.2f}): a one-pass calibration cannot take less than the first.", "",
             "digits CNN (BN folded), 64 calibration samples in one batch, test accuracy on 450 samples:", "",
             *digits_table(methods)]
    if args.scaling:
        lines += ["", *scaling_table(args.samples, args.scaling, args.size, args.batch, got)]
    print("\n".join(lines))
    if not args.no_write:
        RESULTS.write_text("\n".join(lines) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
