"""Verification engine: metrics, tolerances, thresholds, input synthesis and .npz checks."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from conftest import make_model, tensor
from graphopt.errors import InputError
from graphopt.verify import Thresholds, compare_outputs, load_npz, output_metrics, synthesize_inputs
from graphopt.verify.compare import allclose_relative


def test_metrics_on_known_values():
    ref = [np.array([[3.0, 4.0, 0.0]], np.float32)]
    cand = [np.array([[3.0, 4.0, 1.0]], np.float32)]
    m = output_metrics(ref, cand)
    assert m["max_abs_error"] == 1.0 and m["mean_abs_error"] == pytest.approx(1 / 3)
    assert m["cosine"] == pytest.approx(25 / (5 * np.sqrt(26)))
    assert m["snr_db"] == pytest.approx(10 * np.log10(25.0))
    assert m["top1_agreement"] == 1.0


def test_nan_is_never_close_and_counted_separately():
    ref = [np.array([1.0, 2.0], np.float32)]
    cand = [np.array([1.0, np.nan], np.float32)]
    assert output_metrics(ref, cand)["nan_or_inf_candidate"] == 1
    assert allclose_relative(ref, cand)[0] is False
    result = compare_outputs([{"y": ref[0]}], [{"y": cand[0]}], lossless=True)
    assert not result["passed"]
    assert Thresholds().failures(result["outputs"])


def test_relative_tolerance_reports_needed_rtol():
    ref = [np.array([1000.0, 1.0])]
    ok, needed = allclose_relative(ref, [np.array([1000.001, 1.0])])
    assert ok and needed == pytest.approx(1e-6, rel=1e-3)
    ok, needed = allclose_relative(ref, [np.array([1000.1, 1.0])])
    assert not ok and needed == pytest.approx(1e-4, rel=1e-3)


def test_thresholds_name_the_failing_metric():
    outputs = {"y": {"cosine": 0.9, "snr_db": 30.0, "max_abs_error": 0.5}}
    failures = Thresholds(min_cosine=0.99, max_abs_error=0.1).failures(outputs)
    assert failures == ["y: cosine 0.9 not >= 0.99", "y: max_abs_error 0.5 not <= 0.1"]
    with pytest.raises(InputError, match="unknown verify threshold"):
        Thresholds.from_dict({"min_cos": 1})


def test_synthesized_token_ids_stay_inside_the_embedding_table():
    nodes = [helper.make_node("Gather", ["table", "ids"], ["y"])]
    model = make_model(nodes, [tensor("ids", ["batch", "seq"], TensorProto.INT64)],
                       [tensor("y", ["batch", "seq", 4])], {"table": np.ones((7, 4), np.float32)})
    feeds = synthesize_inputs(model, count=3, seed=1)
    assert all(f["ids"].max() < 7 and f["ids"].shape == (1, 16) for f in feeds)
    assert np.array_equal(feeds[0]["ids"], synthesize_inputs(model, count=3, seed=1)[0]["ids"])


def _model():
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["N", 3])], [tensor("y", ["N", 3])])


def test_npz_checked_against_model(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((5, 3), np.float32))
    feeds = load_npz(path, _model())
    assert len(feeds) == 1 and feeds[0]["x"].shape == (5, 3)
    np.savez(path, z=np.zeros((5, 3), np.float32))
    with pytest.raises(InputError, match="no array for model input"):
        load_npz(path, _model())
    np.savez(path, x=np.zeros((5, 4), np.float32))
    with pytest.raises(InputError, match="expects dim 1 = 3"):
        load_npz(path, _model())
    np.savez(path, x=np.zeros((5, 3), np.complex64))
    with pytest.raises(InputError, match="dtype"):
        load_npz(path, _model())
    path.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_npz(path, _model())


def test_runs_are_bounded_in_time(monkeypatch):
    from graphopt.verify import runner

    w = np.ones((1500, 1500), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"])] + [
        helper.make_node("MatMul", [f"{'a' * i}", "w"], ["a" * (i + 1)]) for i in range(1, 40)]
    model = make_model(nodes, [tensor("x", [1500, 1500])], [tensor("a" * 40, [1500, 1500])], {"w": w})
    monkeypatch.setattr(runner, "RUN_TIMEOUT_S", 0.05)
    with pytest.raises(InputError, match="GRAPHOPT_RUN_TIMEOUT"):
        runner.run_model(model, {"x": np.ones((1500, 1500), np.float32)})
