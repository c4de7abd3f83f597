"""Attention fusion (graphopt/fusion/attention.py): self-attention to com.microsoft Attention."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from test_fuse import RNG, _assert_same, _fuse, _init, _model, _ops, _vi

from graphopt.passes import PassContext, create_pass
from graphopt.targets import load_target
from graphopt.verify import run_model
from graphopt.verify.compare import allclose_relative

B, S, H, D = 2, 5, 2, 4
CPU = PassContext(target=load_target("cpu"))


def _attention_layer(p="", src="x", out="y", heads_target=(0, 0, H, D), scale_op="Mul", mask=None, cross=False):
    """Nodes and initializers of one attention layer; names prefixed by `p`."""
    hidden = H * D
    nodes, inits = [], []
    for key in "qkv":
        x = "mem" if cross and key != "q" else src
        inits += [_init(f"{p}W{key}", RNG.standard_normal((hidden, hidden)).astype(np.float32) / 3),
                  _init(f"{p}b{key}", RNG.standard_normal(hidden).astype(np.float32))]
        perm = [0, 2, 3, 1] if key == "k" else [0, 2, 1, 3]
        nodes += [helper.make_node("MatMul", [x, f"{p}W{key}"], [f"{p}{key}_mm"], name=f"/{p}{key}/mm"),
                  helper.make_node("Add", [f"{p}{key}_mm", f"{p}b{key}"], [f"{p}{key}_p"], name=f"/{p}{key}/add"),
                  helper.make_node("Reshape", [f"{p}{key}_p", f"{p}heads"], [f"{p}{key}_r"], name=f"/{p}{key}/reshape"),
                  helper.make_node("Transpose", [f"{p}{key}_r"], [f"{p}{key}_t"], perm=perm, name=f"/{p}{key}/t")]
    inits += [_init(f"{p}heads", np.array(heads_target, np.int64)), _init(f"{p}tokens", np.array([0, 0, hidden], np.int64))]
    factor = 1 / np.sqrt(D) if scale_op == "Mul" else np.sqrt(D)
    inits.append(_init(f"{p}scale", np.array(factor, np.float32)))
    nodes += [helper.make_node("MatMul", [f"{p}q_t", f"{p}k_t"], [f"{p}scores"], name=f"/{p}qk"),
              helper.make_node(scale_op, [f"{p}scores", f"{p}scale"], [f"{p}scaled"], name=f"/{p}scale")]
    logits = f"{p}scaled"
    if mask is not None:
        nodes.append(helper.make_node("Add", [logits, mask], [f"{p}masked"], name=f"/{p}mask"))
        logits = f"{p}masked"
    nodes += [helper.make_node("Softmax", [logits], [f"{p}probs"], axis=-1, name=f"/{p}softmax"),
              helper.make_node("MatMul", [f"{p}probs", f"{p}v_t"], [f"{p}context"], name=f"/{p}pv"),
              helper.make_node("Transpose", [f"{p}context"], [f"{p}merged"], perm=[0, 2, 1, 3], name=f"/{p}merge"),
              helper.make_node("Reshape", [f"{p}merged", f"{p}tokens"], [out], name=f"/{p}out")]
    return nodes, inits


def _attention_model(heads_target=(0, 0, H, D), scale_op="Mul", mask_shape=None, cross=False,
                     scores_output=False):
    nodes, inits = _attention_layer("", "x", "y", heads_target, scale_op, "mask" if mask_shape else None, cross)
    inputs = [_vi("x", [B, S, H * D])] + ([_vi("mem", [B, S, H * D])] if cross else [])
    inputs += [_vi("mask", list(mask_shape))] if mask_shape is not None else []
    outputs = [_vi("y", [B, S, H * D])] + ([_vi("scores", None)] if scores_output else [])
    return _model(nodes, inputs, outputs, inits)


SHAPES = {"x": (B, S, H * D), "mem": (B, S, H * D), "mask": (B, 1, 1, S)}


@pytest.mark.parametrize("heads_target", [(0, 0, H, D), (0, 0, -1, D), (B, S, H, -1)])
@pytest.mark.parametrize("scale_op", ["Mul", "Div"])
def test_self_attention_becomes_one_contrib_node(heads_target, scale_op):
    model = _attention_model(heads_target, scale_op)
    before, result = _fuse(model, CPU)
    assert _ops(result.model) == {"Attention": 1}
    node = result.model.graph.node[0]
    assert node.domain == "com.microsoft"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_heads"] == H and attrs["scale"] == pytest.approx(1 / np.sqrt(D))
    assert [t.dims for t in result.model.graph.initializer if t.name in node.input] == [[H * D, 3 * H * D], [3 * H * D]]
    assert any(o.domain == "com.microsoft" for o in result.model.opset_import)
    _assert_same(before, result.model, SHAPES)


def test_standard_only_targets_keep_the_graph():
    model = _attention_model()
    before, result = _fuse(model)
    assert "Attention" not in _ops(result.model)
    assert all(o.domain in ("", "ai.onnx") for o in result.model.opset_import)


@pytest.mark.parametrize("mask_shape", [(B, 1, 1, S), (B, 1, S, S)])
def test_additive_mask_becomes_attention_bias(mask_shape):
    model = _attention_model(mask_shape=mask_shape)
    before, result = _fuse(model, CPU)
    ops = _ops(result.model)
    assert ops["Attention"] == 1 and "Softmax" not in ops
    attention = next(n for n in result.model.graph.node if n.op_type == "Attention")
    assert len(attention.input) == 6
    # a mask whose broadcast cannot be proven is expanded to (., ., S, S) first
    assert ("Expand" in ops) == (mask_shape[2] == 1)
    feeds = {"x": RNG.standard_normal(SHAPES["x"]).astype(np.float32),
             "mask": np.where(RNG.random(mask_shape) < 0.3, -1e4, 0.0).astype(np.float32)}
    ref, got = run_model(before, feeds), run_model(result.model, feeds)
    assert allclose_relative([ref["y"]], [got["y"]])[0]


def test_cross_attention_is_not_fused():
    before, result = _fuse(_attention_model(cross=True), CPU)
    assert "Attention" not in _ops(result.model)
    assert any("not self-attention" in n for n in result.notes)


def test_scores_read_outside_the_pattern_block_the_fusion():
    before, result = _fuse(_attention_model(scores_output=True), CPU)
    assert "Attention" not in _ops(result.model)
    assert any("readers outside the pattern" in n for n in result.notes)


def test_digits_transformer_attention_fused_outputs_equal():
    from models import zoo

    model = onnx.load(str(zoo.digits_transformer()))
    before = onnx.ModelProto()
    before.CopyFrom(model)
    cleaned = create_pass("cleanup").run(model, CPU).model
    result = create_pass("fuse").run(cleaned, CPU)
    ops = _ops(result.model)
    assert ops["Attention"] == 2 and "Softmax" not in ops and "Transpose" not in ops
    assert len(result.model.graph.node) < 40
    data = zoo.digits_data("test")
    name = before.graph.input[0].name
    x = data[name] if name in data else next(iter(data.values()))
    feeds = {name: np.asarray(x[:64], np.float32)}
    ref, got = run_model(before, feeds), run_model(result.model, feeds)
    for key, value in ref.items():
        assert allclose_relative([value], [got[key]])[0]


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("mask_shape", [None, (B, 1, 1, S)])
def test_standard_attention_with_upgrade_opset(cross, mask_shape):
    model = _attention_model(mask_shape=mask_shape, cross=cross)
    before, result = _fuse(model, upgrade_opset=True)
    ops = _ops(result.model)
    assert ops["Attention"] == 1 and "Softmax" not in ops and "Transpose" not in ops
    assert ops["MatMul"] == 3  # the projections stay: standard Attention takes projected q, k, v
    node = next(n for n in result.model.graph.node if n.op_type == "Attention")
    assert node.domain == "" and len(node.input) == (4 if mask_shape else 3)
    assert result.stats["opset_upgraded_to"] == 23
    assert result.model.ir_version == onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", 23)])
    onnx.checker.check_model(result.model, full_check=True)
    feeds = {"x": RNG.standard_normal(SHAPES["x"]).astype(np.float32),
             "mem": RNG.standard_normal(SHAPES["mem"]).astype(np.float32)}
    if mask_shape:
        feeds["mask"] = np.where(RNG.random(mask_shape) < 0.3, -1e4, 0.0).astype(np.float32)
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in before.graph.input}}
    ref, got = run_model(before, feeds), run_model(result.model, feeds)
    assert allclose_relative([ref["y"]], [got["y"]])[0]


def test_standard_attention_needs_opset23_or_the_flag():
    before, result = _fuse(_attention_model())
    assert "Attention" not in _ops(result.model)
    assert any("opset 17 < 23" in n for n in result.notes)


def test_layers_sharing_a_mask_share_its_expansion():
    first, inits1 = _attention_layer("a_", "x", "h", mask="mask")
    second, inits2 = _attention_layer("b_", "h", "y", mask="mask")
    model = _model(first + second, [_vi("x", [B, "seq", H * D]), _vi("mask", [B, 1, 1, "seq"])],
                   [_vi("y", None)], inits1 + inits2)
    before, result = _fuse(model, CPU)
    ops = _ops(result.model)
    assert ops["Attention"] == 2 and ops["Expand"] == 1
    feeds = {"x": RNG.standard_normal((B, 7, H * D)).astype(np.float32),
             "mask": np.where(RNG.random((B, 1, 1, 7)) < 0.3, -1e4, 0.0).astype(np.float32)}
    ref, got = run_model(before, feeds), run_model(result.model, feeds)
    assert allclose_relative([ref["y"]], [got["y"]])[0]
