"""sparsity-2to4: N:M magnitude pruning / annotation and the metadata check."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import make_model, run_ort, tensor
from onnx import helper, numpy_helper

from graphopt.passes import PassContext, create_pass
from graphopt.sparsity_check import SPARSITY_METADATA_KEY, check_sparsity

RNG = np.random.default_rng(0)


def run_pass(model, **options):
    return create_pass("sparsity-2to4", options).run(model, PassContext())


def metadata(model):
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props[SPARSITY_METADATA_KEY]) if SPARSITY_METADATA_KEY in props else None


def weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def reference_prune(weight, axis, n=2, m=4):
    """Independent loop implementation: per group keep the n largest |w| (lower index on ties)."""
    moved = np.moveaxis(weight.copy(), axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    for row in flat:
        for start in range(0, len(row), m):
            group = row[start:start + m]
            keep = sorted(range(m), key=lambda i: (-abs(group[i]), i))[:n]
            for i in range(m):
                if i not in keep:
                    group[i] = 0
    return np.moveaxis(flat.reshape(moved.shape), -1, axis)


def conv_model(cin=8, cout=6):
    w = RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return make_model([node], [tensor("x", [2, cin, 5, 5])], [tensor("y", [2, cout, 5, 5])], {"w": w}), 1


def gemm_model(trans_b):
    w = RNG.standard_normal((12, 16) if trans_b else (16, 12)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], "gemm", transB=trans_b)
    model = make_model([node], [tensor("x", [3, 16])], [tensor("y", [3, 12])],
                       {"w": w, "b": RNG.standard_normal(12).astype(np.float32)})
    return model, 1 if trans_b else 0


def matmul_model(weight=None):
    w = RNG.standard_normal((16, 8)).astype(np.float32) if weight is None else weight
    node = helper.make_node("MatMul", ["x", "w"], ["y"], "mm")
    return make_model([node], [tensor("x", [3, w.shape[0]])], [tensor("y", [3, w.shape[1]])], {"w": w}), 0


def feeds_for(model, seed=1):
    value = model.graph.input[0]
    shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
    return {value.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("build", [conv_model, lambda: gemm_model(0), lambda: gemm_model(1), matmul_model],
                         ids=["conv", "gemm_transB0", "gemm_transB1", "matmul"])
def test_prune_enforces_pattern_along_reduction_axis(build):
    model, axis = build()
    original = weights(model)["w"]
    result = run_pass(model)
    pruned = weights(result.model)["w"]
    np.testing.assert_array_equal(pruned, reference_prune(original, axis))
    assert np.count_nonzero(pruned) == original.size // 2
    node_name = result.model.graph.node[0].name
    assert metadata(result.model) == {"pattern": "2:4", "n": 2, "m": 4,
                                      "tensors": {"w": {"axis": axis, "node": node_name}}}
    check = check_sparsity(result.model)
    assert check["ok"] and check["tensors"]["w"]["violations"] == 0 and check["tensors"]["w"]["density"] == 0.5
    # The pruned model computes exactly the original graph with the pruned weight.
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    expected.graph.initializer[0].CopyFrom(numpy_helper.from_array(pruned, "w"))
    feeds = feeds_for(model)
    np.testing.assert_array_equal(run_ort(result.model, feeds)["y"], run_ort(expected, feeds)["y"])
    assert result.stats["tensors_pruned"] == 1 and result.stats["weights_zeroed"] == original.size // 2
    onnx.checker.check_model(result.model, full_check=True)
    assert not create_pass("sparsity-2to4").is_lossless()


def test_annotate_finds_exactly_the_conforming_weights_and_is_lossless():
    dense = RNG.standard_normal((16, 8)).astype(np.float32)
    sparse = reference_prune(RNG.standard_normal((16, 8)).astype(np.float32), 0)
    sparse[0:4, 0] = [0, 0, 0, 3.0]  # fewer than n non-zeros in a group still conforms
    nodes = [helper.make_node("MatMul", ["x", "wd"], ["h"], "dense"),
             helper.make_node("MatMul", ["x", "ws"], ["y"], "sparse")]
    model = make_model(nodes, [tensor("x", [3, 16])], [tensor("h", [3, 8]), tensor("y", [3, 8])],
                       {"wd": dense, "ws": sparse})
    result = run_pass(model, mode="annotate")
    assert result.changed and create_pass("sparsity-2to4", {"mode": "annotate"}).is_lossless()
    assert metadata(result.model)["tensors"] == {"ws": {"axis": 0, "node": "sparse"}}
    assert any("wd has" in note and "not annotated" in note for note in result.notes)
    assert weights(result.model).keys() == {"wd", "ws"}
    for name, value in weights(model).items():
        np.testing.assert_array_equal(weights(result.model)[name], value)
    assert check_sparsity(result.model)["ok"]


def test_annotate_without_sparse_weights_changes_nothing():
    model, _ = conv_model()
    before = model.SerializeToString(deterministic=True)
    result = run_pass(model, mode="annotate")
    assert not result.changed
    assert result.model.SerializeToString(deterministic=True) == before
    assert check_sparsity(result.model) == {}


def test_reduction_dim_not_multiple_of_m_is_skipped():
    model, _ = conv_model(cin=6)
    before = model.SerializeToString(deterministic=True)
    result = run_pass(model)
    assert not result.changed and result.model.SerializeToString(deterministic=True) == before
    assert result.notes == ["conv: reduction dim 6 of w is not a multiple of 4"]


def test_check_catches_corrupted_weight_and_bad_records():
    model, _ = gemm_model(1)
    pruned = run_pass(model).model
    w = weights(pruned)["w"].copy()
    w[0, 0:4] = [1.0, 1.0, 1.0, 0.0]  # three non-zeros in one group of four
    pruned.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    check = check_sparsity(pruned)
    assert not check["ok"] and check["tensors"]["w"]["violations"] == 1
    meta = metadata(pruned)
    meta["tensors"]["w"]["axis"] = 0  # not Gemm(transB=1)'s reduction axis
    pruned.metadata_props[0].value = json.dumps(meta)
    assert "not the reduction axis" in check_sparsity(pruned)["tensors"]["w"]["error"]
    pruned.metadata_props[0].value = "{not json"
    assert check_sparsity(pruned)["ok"] is False


def test_shared_weight_and_exclude():
    w = RNG.standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], "keep_dense"),
             helper.make_node("MatMul", ["x", "w"], ["b"], "make_sparse")]
    model = make_model(nodes, [tensor("x", [3, 16])], [tensor("a", [3, 8]), tensor("b", [3, 8])], {"w": w})
    result = run_pass(model, exclude=["keep_*"])
    out = weights(result.model)
    np.testing.assert_array_equal(out["w"], w)  # the excluded reader still sees the dense weight
    assert result.model.graph.node[1].input[1] == "w_2of4"
    np.testing.assert_array_equal(out["w_2of4"], reference_prune(w, 0))
    assert check_sparsity(result.model)["ok"]
    assert list(metadata(result.model)["tensors"]) == ["w_2of4"]


def test_prune_is_deterministic_and_idempotent():
    model, _ = conv_model()
    first, again = run_pass(model), run_pass(model)
    assert first.model.SerializeToString(deterministic=True) == again.model.SerializeToString(deterministic=True)
    twice = run_pass(first.model)
    assert twice.stats["weights_zeroed"] == 0
    np.testing.assert_array_equal(weights(twice.model)["w"], weights(first.model)["w"])


def test_other_patterns_and_min_size():
    model, _ = matmul_model(RNG.standard_normal((16, 8)).astype(np.float32))
    result = run_pass(model, n=1, m=8)
    assert metadata(result.model)["pattern"] == "1:8"
    assert np.count_nonzero(weights(result.model)["w"]) == 16
    assert check_sparsity(result.model)["ok"]
    small = run_pass(model, min_size=1000)
    assert not small.changed and "min_size" in small.notes[0]


def test_digits_models_prune_and_check():
    from models import zoo

    for path in (zoo.digits_cnn(), zoo.digits_mlp()):
        result = run_pass(onnx.load(path))
        check = check_sparsity(result.model)
        assert check["ok"] and len(check["tensors"]) == 3


def test_inspect_reports_sparsity():
    from graphopt.cli.inspect import inspect_model

    model, _ = matmul_model()
    info = inspect_model(run_pass(model).model)
    assert info["sparsity"]["ok"] and "w" in info["sparsity"]["tensors"]
