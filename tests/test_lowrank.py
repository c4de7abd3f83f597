"""lowrank: SVD split of MatMul / Gemm / 1x1 Conv with constant 2-D weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, run_ort, tensor
from onnx import helper

from graphopt.passes import PassContext, create_pass
from graphopt.targets import load_target

RNG = np.random.default_rng(0)


def low_rank_matrix(rows: int, cols: int, rank: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))).astype(np.float32)


def matmul_model(weight: np.ndarray, batch: int = 3) -> onnx.ModelProto:
    k, n = weight.shape
    node = helper.make_node("MatMul", ["x", "w"], ["y"], "mm")
    return make_model([node], [tensor("x", [batch, k])], [tensor("y", [batch, n])], {"w": weight})


def gemm_model(weight, trans_a, trans_b, alpha, beta, bias, rows=5):
    kdim, ndim = (weight.T.shape if trans_b else weight.shape)
    a_shape = [kdim, rows] if trans_a else [rows, kdim]
    inits = {"w": weight}
    inputs = ["a", "w"]
    if bias is not None:
        inits["c"] = bias
        inputs.append("c")
    node = helper.make_node("Gemm", inputs, ["y"], "gemm", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    return make_model([node], [tensor("a", a_shape)], [tensor("y", [rows, ndim])], inits)


def run_pass(model, target=None, feeds=None, **options):
    ctx = PassContext(target=target, verification_inputs=feeds)
    return create_pass("lowrank", options).run(model, ctx)


def feeds_for(model, seed=1):
    rng = np.random.default_rng(seed)
    value = model.graph.input[0]
    shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
    return {value.name: rng.standard_normal(shape).astype(np.float32)}


def assert_close(a, b, feeds, rtol=1e-4, atol=1e-4):
    out_a, out_b = run_ort(a, feeds), run_ort(b, feeds)
    for name in out_a:
        np.testing.assert_allclose(out_b[name], out_a[name], rtol=rtol, atol=atol)


def ops(model):
    return [n.op_type for n in model.graph.node]


def test_full_rank_forced_split_is_exact_to_round_off():
    weight = RNG.standard_normal((64, 64)).astype(np.float32)
    model = matmul_model(weight)
    feeds = feeds_for(model)
    result = run_pass(model, feeds=[feeds], ratio=1.0, force=True)
    assert result.changed and ops(result.model) == ["MatMul", "MatMul"]
    row = result.stats["layers"]["mm"]
    assert row["k"] == 64 and row["kept_energy"] == pytest.approx(1.0)
    assert row["output_rel_error"] < 1e-5
    assert_close(model, result.model, feeds, rtol=1e-4, atol=1e-4)
    onnx.checker.check_model(result.model, full_check=True)


def test_exact_rank_r_split_at_k_equals_r():
    weight = low_rank_matrix(96, 80, 8)
    model = matmul_model(weight)
    feeds = feeds_for(model)
    for options in ({}, {"rank": 8}, {"energy": 1.0}, {"rank": 50}):  # rank 50 capped at numerical rank 8
        result = run_pass(model, feeds=[feeds], **options)
        row = result.stats["layers"]["mm"]
        assert (row["k"], row["numerical_rank"]) == (8, 8), options
        assert row["params_after"] == 8 * (96 + 80) and row["params_before"] == 96 * 80
        assert row["output_rel_error"] < 1e-5
        assert_close(model, result.model, feeds)
        assert "w" not in {t.name for t in result.model.graph.initializer}  # old weight dropped


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta,with_bias", [(1.0, 1.0, True), (0.5, 2.0, True), (1.5, 1.0, False)])
def test_gemm_variants_exact_at_numerical_rank(trans_a, trans_b, alpha, beta, with_bias):
    weight = low_rank_matrix(96, 64, 6, seed=trans_a + 2 * trans_b)
    weight = np.ascontiguousarray(weight.T) if trans_b else weight
    bias = RNG.standard_normal(64).astype(np.float32) if with_bias else None
    model = gemm_model(weight, trans_a, trans_b, alpha, beta, bias)
    feeds = feeds_for(model)
    result = run_pass(model, feeds=[feeds])
    assert ops(result.model) == ["Gemm", "Gemm"]
    first, second = result.model.graph.node
    assert len(first.input) == 2 and list(second.input[2:]) == (["c"] if with_bias else [])
    assert result.stats["layers"]["gemm"]["k"] == 6
    assert_close(model, result.model, feeds)


def test_gemm_before_opset_11_gets_zero_bias_on_first_product():
    weight = low_rank_matrix(64, 48, 4)
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], "gemm")
    model = make_model([node], [tensor("a", [2, 64])], [tensor("y", [2, 48])],
                       {"w": weight, "c": np.ones(48, np.float32)}, opset=9, ir_version=4)
    feeds = feeds_for(model)
    result = run_pass(model, feeds=[feeds])
    assert len(result.model.graph.node[0].input) == 3
    onnx.checker.check_model(result.model, full_check=True)
    assert_close(model, result.model, feeds)


@pytest.mark.parametrize("strides,pads,bias", [([1, 1], [0, 0, 0, 0], True), ([2, 2], [1, 1, 1, 1], True),
                                               ([1, 1], [0, 0, 0, 0], False)])
def test_conv1x1_split(strides, pads, bias):
    weight = low_rank_matrix(64, 96, 5).reshape(64, 96, 1, 1)
    inits = {"w": weight}
    inputs = ["x", "w"]
    if bias:
        inits["b"] = RNG.standard_normal(64).astype(np.float32)
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], "conv", kernel_shape=[1, 1], strides=strides, pads=pads)
    out_hw = (6 + pads[0] + pads[2] - 1) // strides[0] + 1
    model = make_model([node], [tensor("x", [2, 96, 6, 6])], [tensor("y", [2, 64, out_hw, out_hw])], inits)
    feeds = feeds_for(model)
    assert not run_pass(model, feeds=[feeds]).changed  # conv1x1 is opt-in
    result = run_pass(model, feeds=[feeds], conv1x1=True)
    assert ops(result.model) == ["Conv", "Conv"]
    assert result.stats["layers"]["conv"]["k"] == 5
    assert result.stats["layers"]["conv"]["rows"] == 2 * out_hw * out_hw
    assert_close(model, result.model, feeds)


def test_energy_picks_smallest_rank_holding_the_fraction():
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    v, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    s = np.array([8.0, 4.0, 2.0, 1.0] + [0.01] * 124)  # energies 64, 16, 4, 1 of ~85
    model = matmul_model(((u * s) @ v.T).astype(np.float32))
    total = np.sum(s ** 2)
    for energy, k in ((0.7, 1), (0.9, 2), (0.97, 3), (0.99, 4)):
        row = run_pass(model, energy=energy).stats["layers"]["mm"]
        assert row["k"] == k
        assert row["kept_energy"] == pytest.approx(np.sum(s[:k] ** 2) / total, rel=1e-4)


def test_ratio_truncation_reports_error():
    model = matmul_model(RNG.standard_normal((128, 128)).astype(np.float32))
    feeds = feeds_for(model)
    result = run_pass(model, feeds=[feeds], ratio=0.25)
    row = result.stats["layers"]["mm"]
    assert row["k"] == 32 and 0.05 < row["output_rel_error"] < 1.0
    assert result.stats["params_after"] == 32 * 256 and result.stats["macs_after"] == 3 * 32 * 256


def test_not_split_when_params_do_not_drop():
    model = matmul_model(RNG.standard_normal((64, 64)).astype(np.float32))
    before = model.SerializeToString()
    result = run_pass(model, rank=40)  # needs k < 64*64/128 = 32
    assert not result.changed and result.model.SerializeToString() == before
    assert any("needs k < 32.0" in note for note in result.notes)
    assert any("no target given" in note for note in result.notes)


def test_not_split_when_target_cost_does_not_drop():
    """A small layer on one row: the extra node's fixed overhead outweighs the saved bytes."""
    model = matmul_model(low_rank_matrix(64, 64, 4), batch=1)
    feeds = feeds_for(model)
    target = load_target("cpu")
    assert run_pass(model, feeds=[feeds]).changed  # params alone say yes
    result = run_pass(model, target=target, feeds=[feeds])
    assert not result.changed
    assert any("on the target" in note for note in result.notes)


def test_target_cost_allows_large_layer():
    model = matmul_model(low_rank_matrix(512, 512, 16), batch=64)
    feeds = feeds_for(model)
    result = run_pass(model, target=load_target("cpu"), feeds=[feeds])
    row = result.stats["layers"]["mm"]
    assert result.changed and row["latency_ms_after"] < row["latency_ms_before"]


def test_min_size_exclude_and_non_constant_weights():
    weight = low_rank_matrix(96, 80, 8)
    model = matmul_model(weight)
    for options, reason in (({"min_size": 10_000}, "min_size"), ({"exclude": ["m*"]}, "excluded")):
        result = run_pass(model, **options)
        assert not result.changed and any(reason in note for note in result.notes)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], "mm")
    dynamic = make_model([node], [tensor("x", [2, 8]), tensor("w", [8, 4])], [tensor("y", [2, 4])])
    result = run_pass(dynamic)
    assert not result.changed and "weight is not a constant" in result.notes[0]


def test_skip_sites_and_lossless_flag():
    model = matmul_model(low_rank_matrix(96, 80, 8))
    result = create_pass("lowrank").run(model, PassContext(skip_sites=frozenset({"mm"})))
    assert not result.changed and "skipped on request" in result.notes[0]
    assert create_pass("lowrank").is_lossless()
    assert create_pass("lowrank", {"energy": 1.0}).is_lossless()
    assert not create_pass("lowrank", {"rank": 4}).is_lossless()
    assert not create_pass("lowrank", {"energy": 0.9}).is_lossless()


def test_deterministic_and_shared_weight():
    weight = low_rank_matrix(96, 80, 8)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y1"], "mm1"),
             helper.make_node("MatMul", ["x", "w"], ["y2"], "mm2")]
    model = make_model(nodes, [tensor("x", [3, 96])], [tensor("y1", [3, 80]), tensor("y2", [3, 80])], {"w": weight})
    feeds = feeds_for(model)
    a, b = run_pass(model, feeds=[feeds]), run_pass(model, feeds=[feeds])
    assert a.model.SerializeToString(deterministic=True) == b.model.SerializeToString(deterministic=True)
    assert a.stats["layers_split"] == 2 and len(a.model.graph.node) == 4
    assert_close(model, a.model, feeds)


def test_lossless_default_through_optimize():
    """The pass manager verifies the default (numerical-rank) split as lossless."""
    import graphopt

    model = matmul_model(low_rank_matrix(96, 80, 8), batch=64)
    result = graphopt.optimize(model, passes="lowrank", target="cpu")
    step = result.report["passes"][0]
    assert step["changed"] and step["stats"]["layers_split"] == 1
    assert result.report["verification"]["passed"]


def test_float16_weight_split_keeps_dtype():
    weight = low_rank_matrix(96, 80, 8).astype(np.float16)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], "mm")
    model = make_model([node], [tensor("x", [3, 96], onnx.TensorProto.FLOAT16)],
                       [tensor("y", [3, 80], onnx.TensorProto.FLOAT16)], {"w": weight})
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 96)).astype(np.float16)}
    result = run_pass(model, feeds=[feeds])
    assert result.stats["layers"]["mm"]["k"] == 8
    assert {t.data_type for t in result.model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    ref, got = run_ort(model, feeds)["y"], run_ort(result.model, feeds)["y"]
    assert np.linalg.norm(got.astype(np.float32) - ref) / np.linalg.norm(ref.astype(np.float32)) < 5e-3


def test_min_saving_skips_layers_that_barely_shrink():
    model = matmul_model(RNG.standard_normal((128, 128)).astype(np.float32))
    assert run_pass(model, rank=56).changed  # saves 12.5% of the params
    result = run_pass(model, rank=56, min_saving=0.2)
    assert not result.changed and "saves 12.5% of the params < min_saving=0.2" in result.notes[-1]
