"""The sample models: shipped digits files are valid, run, and reproduce their recorded
accuracy; the zoo finds the third-party files; the torch exporters produce valid graphs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import zoo

DIGITS = {"cnn": zoo.digits_cnn, "mlp": zoo.digits_mlp, "transformer": zoo.digits_transformer}


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", sorted(DIGITS))
def test_digits_model_valid_and_accurate(name):
    path = DIGITS[name]()
    assert path.stat().st_size < 200_000
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert {o.domain or "": o.version for o in m.opset_import}[""] == 17
    (inp,) = m.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "input" and dims == ["N", 1, 8, 8]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in m.graph.output] == ["logits"]

    data = zoo.digits_data("test")
    logits = _session(path).run(["logits"], {"input": data["input"]})[0]
    assert logits.shape == (len(data["label"]), 10)
    acc = float((logits.argmax(1) == data["label"]).mean())
    assert acc == pytest.approx(zoo.recorded_accuracy(path), abs=1e-6)
    assert acc > 0.95


def test_digits_cnn_keeps_batchnorm_and_residual():
    ops = [n.op_type for n in onnx.load(str(zoo.digits_cnn())).graph.node]
    assert ops.count("BatchNormalization") == 3 and "Add" in ops and "MaxPool" in ops and "Gemm" in ops


def test_digits_mlp_structure():
    ops = [n.op_type for n in onnx.load(str(zoo.digits_mlp())).graph.node]
    assert ops == ["Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm"]


def test_digits_transformer_uses_plain_attention():
    ops = [n.op_type for n in onnx.load(str(zoo.digits_transformer())).graph.node]
    assert ops.count("Softmax") == 2 and ops.count("LayerNormalization") == 5 and "Erf" in ops


def test_digits_data_shapes():
    calib, test = zoo.digits_data("calib"), zoo.digits_data("test")
    assert calib["input"].shape == (64, 1, 8, 8) and calib["input"].dtype == np.float32
    assert test["input"].shape == (450, 1, 8, 8) and test["label"].dtype == np.int64
    assert set(np.unique(test["label"])) == set(range(10))
    with pytest.raises(ValueError):
        zoo.digits_data("train")


@pytest.mark.parametrize("name", sorted(DIGITS))
def test_digits_dynamic_batch(name):
    sess = _session(DIGITS[name]())
    x = zoo.digits_data("calib")["input"]
    full = sess.run(None, {"input": x})[0]
    one = sess.run(None, {"input": x[:1]})[0]
    np.testing.assert_allclose(one, full[:1], rtol=1e-5, atol=1e-5)


def test_third_party_paths_exist():
    found = zoo.third_party_models()
    for name in ("ppocr_det", "ppocr_rec", "ppocr_cls", "magika", "silero_vad"):
        assert name in found and found[name].is_file(), name
    assert zoo.silero_vad() == found["silero_vad"]
    assert "onnx_backend/light_resnet50" in found and "onnx_backend/test_Conv2d" in found
    assert all(p.is_file() and p.suffix == ".onnx" for p in found.values())


def test_small_third_party_models_run():
    # the smallest real model and one backend light model load and run in onnxruntime
    sess = _session(zoo.ppocr_cls())
    out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, 48, 192), np.float32)})[0]
    assert out.shape == (1, 2)
    sess = _session(zoo.onnx_backend_models()["light_squeezenet"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 3, 224, 224), np.float32)})[0]
    assert out.shape[0] == 1


def test_missing_package_raises_clear_error(monkeypatch):
    monkeypatch.setattr(zoo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(zoo.ModelUnavailable, match="pip install rapidocr-onnxruntime"):
        zoo.ppocr_det()
    assert zoo.third_party_models() == {}


def test_encoder_block_export(tmp_path):
    from models import torch_nets

    path = torch_nets.export_encoder_block(tmp_path / "enc.onnx", seq=8, d=32)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = _session(path)
    out = sess.run(None, {"hidden": np.ones((2, 5, 32), np.float32), "mask": np.ones((2, 5), np.int64)})[0]
    assert out.shape == (2, 5, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_torch_cnn_export(tmp_path, name):
    import torch

    from models import torch_nets

    exporter = getattr(torch_nets, f"export_{name}")
    path = exporter(tmp_path / f"{name}.onnx", image_size=64)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("BatchNormalization") == ops.count("Conv")  # BN kept for the fusion passes
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = _session(path).run(["logits"], {"input": x})[0]
    model = torch_nets.randomize({"resnet18": torch_nets.ResNet18, "mobilenetv2": torch_nets.MobileNetV2}[name](), 0)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@pytest.mark.slow
def test_minilm_export_matches_sentence_transformers():
    path = zoo.minilm()  # export() itself asserts cosine > 0.9999 when it builds
    from models import export_minilm

    assert export_minilm.check(path, export_minilm.tokenize(export_minilm.SENTENCES)) > 0.9999
