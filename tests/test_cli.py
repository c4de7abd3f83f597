"""The CLI end to end: exit codes, one-line errors, atomic outputs, reports, dumps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from graphopt.cli import main
from graphopt.passes import Pass, PassResult, register_pass


@register_pass
class _WrongLossless(Pass):
    """Planted compiler bug: negates the Gemm weight but claims to be lossless."""

    name = "test-cli-wrong"
    summary = "test only"
    lossless = True

    def run(self, model, ctx):
        for init in model.graph.initializer:
            if init.name.endswith("weight") and len(init.dims) == 2:
                values = -onnx.numpy_helper.to_array(init)
                init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
                return PassResult(model, True, {"negated": 1})
        return PassResult(model, False)


@register_pass
class _Lossy(_WrongLossless):
    name = "test-cli-lossy"
    lossless = False


@pytest.fixture
def cnn(tmp_path, digits_cnn_path):
    path = tmp_path / "in.onnx"
    shutil.copy(digits_cnn_path, path)
    return path


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphopt: error: "), err
    return err[0]


def test_optimize_writes_verified_model_and_reports(cnn, tmp_path, capsys, digits_test_path):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    before = cnn.read_bytes()
    code = main(["optimize", str(cnn), "-o", str(out), "--passes", "cleanup", "--inputs", str(digits_test_path),
                 "--report", str(report), "--report", str(tmp_path / "r.md")])
    assert code == 0
    assert cnn.read_bytes() == before
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    data = json.loads(report.read_text())
    for key in ("input", "output", "target", "passes", "cost", "verification"):
        assert key in data
    assert data["passes"][0]["name"] == "cleanup" and data["verification"]["passed"]
    assert {"before", "after"} <= set(data["cost"])
    assert "# graphopt report" in (tmp_path / "r.md").read_text()


def test_output_is_deterministic(cnn, tmp_path):
    for name in ("a.onnx", "b.onnx"):
        assert main(["optimize", str(cnn), "-o", str(tmp_path / name), "--passes", "cleanup", "--quiet"]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.parametrize("content,message", [(None, "no such file"), (b"", "empty"),
                                              (b"\x00garbage\xff" * 10, "not an ONNX model")])
def test_bad_input_files_exit_1_with_one_line(tmp_path, capsys, content, message):
    src = tmp_path / "bad.onnx"
    if content is not None:
        src.write_bytes(content)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--passes", "cleanup"]) == 1
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_truncated_model_exits_1(tmp_path, capsys, digits_cnn_path):
    src = tmp_path / "cut.onnx"
    src.write_bytes(digits_cnn_path.read_bytes()[:5000])
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx")]) == 1
    _one_line_error(capsys)


@pytest.mark.parametrize("args,message", [(["--passes", "nope"], "unknown pass"),
                                          (["--passes", "cleanup{x=1}"], "no option"),
                                          (["--target", "tpu9"], "tpu9")])
def test_bad_options_exit_1_before_writing(cnn, tmp_path, capsys, args, message):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(cnn), "-o", str(out), *args]) == 1
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_existing_output_needs_force(cnn, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    out.write_bytes(b"keep me")
    assert main(["optimize", str(cnn), "-o", str(out), "--passes", "cleanup"]) == 1
    assert "--force" in _one_line_error(capsys)
    assert out.read_bytes() == b"keep me"
    assert main(["optimize", str(cnn), "-o", str(cnn), "--passes", "cleanup", "--force"]) == 1
    assert "overwrite the input" in _one_line_error(capsys)


def test_lossless_violation_is_exit_3_naming_the_pass(cnn, tmp_path, capsys):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code = main(["optimize", str(cnn), "-o", str(out), "--passes", "cleanup,test-cli-wrong", "--report", str(report)])
    assert code == 3
    assert "test-cli-wrong" in capsys.readouterr().err
    assert not out.exists()
    assert json.loads(report.read_text())["passes"][-1]["failed"]


def test_verification_failure_is_exit_2_and_writes_no_model(cnn, tmp_path, capsys):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    code = main(["optimize", str(cnn), "-o", str(out), "--passes", "test-cli-lossy", "--report", str(report)])
    assert code == 2
    assert not out.exists()
    assert json.loads(report.read_text())["verification"]["passed"] is False
    assert main(["optimize", str(cnn), "-o", str(out), "--passes", "test-cli-lossy", "--force", "--quiet"]) == 2
    assert out.exists()


def test_dump_dir_and_pipeline_file(cnn, tmp_path):
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('target = "cpu"\n[[passes]]\nname = "cleanup"\n[verify]\nmin_cosine = 0.999\n')
    dump = tmp_path / "dump"
    assert main(["optimize", str(cnn), "-o", str(tmp_path / "o.onnx"), "--pipeline", str(pipeline),
                 "--dump-dir", str(dump), "--quiet"]) == 0
    names = sorted(p.name for p in dump.iterdir())
    assert names == ["00-input.onnx", "01-cleanup.json", "01-cleanup.onnx"]
    assert json.loads((dump / "01-cleanup.json").read_text())["name"] == "cleanup"


def test_verify_and_inspect_commands(cnn, tmp_path, capsys, digits_test_path):
    assert main(["verify", str(cnn), str(cnn), "--inputs", str(digits_test_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["outputs"]["logits"]["cosine"] == 1.0
    assert main(["inspect", str(cnn), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ops"]["Conv"] == 3 and info["inputs"] == {"input": "float[N,1,8,8]"}


def test_passes_lists_every_pass_with_options(capsys):
    assert main(["passes", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "cleanup" in rows and rows["cleanup"]["options"][0]["name"] == "fold_constants"


def test_console_script_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graphopt", "optimize", "missing.onnx", "-o", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "graphopt: error: missing.onnx: no such file"


def test_optimize_imports_a_pytorch_program_and_verifies_it(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)).eval()
    source = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 1, 8, 8),)), str(source))
    out, report = tmp_path / "net.onnx", tmp_path / "r.json"
    assert main(["optimize", str(source), "-o", str(out), "--passes", "cleanup", "--report", str(report), "--quiet"]) == 0
    imported = json.loads(report.read_text())["import"]
    assert imported["framework"] == "pytorch" and imported["passed"] and imported["cosine"] > 0.9999
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_onnxruntime_out_of_memory_is_exit_1_with_one_line(cnn, tmp_path, capsys, monkeypatch):
    import onnxruntime

    def no_memory(self, *args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                           "running Conv node. Failed to allocate memory for requested buffer of size 1073741824")

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", no_memory)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(cnn), "-o", str(out), "--passes", "cleanup"]) == 1
    assert "ran out of memory" in _one_line_error(capsys)
    assert not out.exists()
