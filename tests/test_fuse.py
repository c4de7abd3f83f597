"""Tests of the `fuse` pass: one graph built per fusion, numerics checked in onnxruntime."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.passes import PassContext, create_pass
from graphopt.verify import run_model
from graphopt.verify.compare import allclose_relative

RNG = np.random.default_rng(0)
F = TensorProto.FLOAT


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
    for value in model.graph.output:  # outputs declared without a shape take the inferred one
        if not value.type.tensor_type.HasField("shape") and value.name in inferred:
            value.CopyFrom(inferred[value.name])
    onnx.checker.check_model(model)
    return model


def _vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def _fuse(model, ctx=None, **options):
    before = onnx.ModelProto()
    before.CopyFrom(model)
    result = create_pass("fuse", options).run(model, ctx or PassContext())
    return before, result


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def _feeds(model, shapes):
    out = {}
    for value in model.graph.input:
        if value.name in {t.name for t in model.graph.initializer}:
            continue
        out[value.name] = RNG.standard_normal(shapes[value.name]).astype(np.float32)
    return out


def _assert_same(before, after, shapes):
    onnx.checker.check_model(after)
    onnx.shape_inference.infer_shapes(after, strict_mode=True)
    feeds = _feeds(before, shapes)
    ref, got = run_model(before, feeds), run_model(after, feeds)
    for name, value in ref.items():
        ok, needed = allclose_relative([value], [got[name]])
        assert ok, f"{name}: relative error {needed}"


def _unchanged(before, result):
    assert not result.changed
    assert result.model.graph.SerializeToString(deterministic=True) == before.graph.SerializeToString(deterministic=True) \
        or _ops(result.model) == _ops(before)


def _bn(name, x, out, c):
    inits = [_init(f"{name}_s", RNG.uniform(0.5, 1.5, c).astype(np.float32)),
             _init(f"{name}_b", RNG.standard_normal(c).astype(np.float32)),
             _init(f"{name}_m", RNG.standard_normal(c).astype(np.float32)),
             _init(f"{name}_v", RNG.uniform(0.5, 2.0, c).astype(np.float32))]
    node = helper.make_node("BatchNormalization", [x] + [t.name for t in inits], [out], name=name, epsilon=1e-3)
    return node, inits


# ---------------------------------------------------------------- BatchNorm folding
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_conv_bn_folded(groups, bias, transpose):
    cin, cout = 4, 8
    op = "ConvTranspose" if transpose else "Conv"
    wshape = (cin, cout // groups, 3, 3) if transpose else (cout, cin // groups, 3, 3)
    inits = [_init("W", RNG.standard_normal(wshape).astype(np.float32))]
    ins = ["x", "W"]
    if bias:
        inits.append(_init("B", RNG.standard_normal(cout).astype(np.float32)))
        ins.append("B")
    conv = helper.make_node(op, ins, ["c"], name="/conv", group=groups, pads=[1, 1, 1, 1])
    bn, bn_inits = _bn("/bn", "c", "y", cout)
    model = _model([conv, bn], [_vi("x", [1, cin, 6, 6])], [_vi("y", None)], inits + bn_inits)
    before, result = _fuse(model)
    assert result.stats["bn_folded"] == 1 and "BatchNormalization" not in _ops(result.model)
    assert result.model.graph.output[0].name == "y" and result.sites == ["bn_folded:/bn"]
    _assert_same(before, result.model, {"x": (1, cin, 6, 6)})


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_gemm_bn_folded(trans_b, beta):
    w = RNG.standard_normal((5, 6) if trans_b else (6, 5)).astype(np.float32)
    gemm = helper.make_node("Gemm", ["x", "W", "C"], ["g"], name="/fc", transB=trans_b, beta=beta)
    bn, bn_inits = _bn("/bn", "g", "y", 5)
    model = _model([gemm, bn], [_vi("x", [3, 6])], [_vi("y", None)],
                   [_init("W", w), _init("C", RNG.standard_normal(5).astype(np.float32))] + bn_inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Gemm": 1}
    _assert_same(before, result.model, {"x": (3, 6)})


def test_matmul_bn_becomes_gemm():
    mm = helper.make_node("MatMul", ["x", "W"], ["m"], name="/mm")
    bn, bn_inits = _bn("/bn", "m", "y", 5)
    model = _model([mm, bn], [_vi("x", [3, 6])], [_vi("y", None)],
                   [_init("W", RNG.standard_normal((6, 5)).astype(np.float32))] + bn_inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Gemm": 1}
    _assert_same(before, result.model, {"x": (3, 6)})


@pytest.mark.parametrize("groups", [1, 2])
def test_bn_before_unpadded_conv_folded(groups):
    bn, bn_inits = _bn("/bn", "x", "b", 4)
    conv = helper.make_node("Conv", ["b", "W", "B"], ["y"], name="/conv", group=groups)
    inits = [_init("W", RNG.standard_normal((6, 4 // groups, 1, 1)).astype(np.float32)),
             _init("B", RNG.standard_normal(6).astype(np.float32))]
    model = _model([bn, conv], [_vi("x", [1, 4, 5, 5])], [_vi("y", None)], inits + bn_inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Conv": 1} and result.stats["bn_before_conv_folded"] == 1
    _assert_same(before, result.model, {"x": (1, 4, 5, 5)})


def test_bn_before_padded_conv_not_folded():
    bn, bn_inits = _bn("/bn", "x", "b", 4)
    conv = helper.make_node("Conv", ["b", "W"], ["y"], name="/conv", pads=[1, 1, 1, 1])
    model = _model([bn, conv], [_vi("x", [1, 4, 5, 5])], [_vi("y", None)],
                   [_init("W", RNG.standard_normal((6, 4, 3, 3)).astype(np.float32))] + bn_inits)
    before, result = _fuse(model)
    _unchanged(before, result)
    assert any("pads" in note for note in result.notes)


def test_bn_not_folded_when_weight_not_constant():
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="/conv3")
    bn, bn_inits = _bn("/bn", "c", "y", 4)
    model = _model([conv, bn], [_vi("x", [1, 2, 5, 5]), _vi("w", [4, 2, 3, 3])], [_vi("y", None)], bn_inits)
    before, result = _fuse(model)
    _unchanged(before, result)
    assert "BN '/bn' not folded into '/conv3': weight is not constant" in result.notes


def test_bn_not_folded_when_conv_output_has_two_readers():
    conv = helper.make_node("Conv", ["x", "W"], ["c"], name="/conv")
    bn, bn_inits = _bn("/bn", "c", "y", 4)
    relu = helper.make_node("Relu", ["c"], ["z"], name="/relu")
    model = _model([conv, bn, relu], [_vi("x", [1, 2, 5, 5])], [_vi("y", None), _vi("z", None)],
                   [_init("W", RNG.standard_normal((4, 2, 3, 3)).astype(np.float32))] + bn_inits)
    before, result = _fuse(model)
    _unchanged(before, result)


def test_skip_sites_and_exclude_are_honoured():
    conv = helper.make_node("Conv", ["x", "W"], ["c"], name="/conv")
    bn, bn_inits = _bn("/bn", "c", "y", 4)
    model = _model([conv, bn], [_vi("x", [1, 2, 5, 5])], [_vi("y", None)],
                   [_init("W", RNG.standard_normal((4, 2, 3, 3)).astype(np.float32))] + bn_inits)
    before, result = _fuse(model, PassContext(skip_sites=frozenset({"bn_folded:/bn"})))
    _unchanged(before, result)
    before, result = _fuse(before, exclude=["/c.*"])
    _unchanged(before, result)


@pytest.mark.parametrize("op", ["Mul", "Add", "Sub", "Div"])
def test_bn_then_per_channel_constant_folded_into_bn(op):
    bn, bn_inits = _bn("/bn", "x", "b", 4)
    nodes = [bn, helper.make_node("Unsqueeze", ["k", "ax"], ["ku"], name="/unsq"),
             helper.make_node(op, ["b", "ku"], ["y"], name="/arith")]
    inits = bn_inits + [_init("k", RNG.uniform(0.5, 2, 4).astype(np.float32)), _init("ax", np.array([1, 2], np.int64))]
    model = _model(nodes, [_vi("x", [1, 4, 3, 3])], [_vi("y", None)], inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"BatchNormalization": 1}
    _assert_same(before, result.model, {"x": (1, 4, 3, 3)})


# ---------------------------------------------------------------- affine folding
@pytest.mark.parametrize("op,shape", [("Mul", (1, 4, 1, 1)), ("Mul", ()), ("Add", (4, 1, 1)), ("Sub", (1, 4, 1, 1)),
                                      ("Div", (4, 1, 1))])
def test_conv_affine_folded(op, shape):
    conv = helper.make_node("Conv", ["x", "W", "B"], ["c"], name="/conv")
    arith = helper.make_node(op, ["c", "k"], ["y"], name="/arith")
    inits = [_init("W", RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)),
             _init("B", RNG.standard_normal(4).astype(np.float32)),
             _init("k", RNG.uniform(0.5, 2, shape).astype(np.float32))]
    model = _model([conv, arith], [_vi("x", [1, 2, 5, 5])], [_vi("y", None)], inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Conv": 1}
    _assert_same(before, result.model, {"x": (1, 2, 5, 5)})


def test_conv_mul_by_per_pixel_constant_not_folded():
    conv = helper.make_node("Conv", ["x", "W"], ["c"], name="/conv")
    mul = helper.make_node("Mul", ["c", "k"], ["y"], name="/mul")
    inits = [_init("W", RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)),
             _init("k", RNG.standard_normal((1, 1, 3, 3)).astype(np.float32))]
    model = _model([conv, mul], [_vi("x", [1, 2, 5, 5])], [_vi("y", None)], inits)
    before, result = _fuse(model)
    _unchanged(before, result)


def test_matmul_add_to_gemm_2d_only():
    mm = helper.make_node("MatMul", ["x", "W"], ["m"], name="/mm")
    add = helper.make_node("Add", ["m", "b"], ["y"], name="/add")
    inits = [_init("W", RNG.standard_normal((6, 5)).astype(np.float32)),
             _init("b", RNG.standard_normal(5).astype(np.float32))]
    model = _model([mm, add], [_vi("x", [3, 6])], [_vi("y", None)], inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Gemm": 1}
    _assert_same(before, result.model, {"x": (3, 6)})
    model3 = _model([mm, add], [_vi("x", [2, 3, 6])], [_vi("y", None)], inits)
    before, result = _fuse(model3)
    assert _ops(result.model) == {"MatMul": 1, "Add": 1}


def test_sum_of_two_is_add():
    node = helper.make_node("Sum", ["a", "b"], ["y"], name="/sum")
    model = _model([node], [_vi("a", [2, 3]), _vi("b", [2, 3])], [_vi("y", None)])
    before, result = _fuse(model)
    assert _ops(result.model) == {"Add": 1}
    _assert_same(before, result.model, {"a": (2, 3), "b": (2, 3)})


@pytest.mark.parametrize("shared", [False, True])
def test_constant_chain_merged_only_when_inner_is_private(shared):
    """Regression (fuzz case 284/1811): a shared inner Add must stay, and so must graph outputs."""
    nodes = [helper.make_node("Add", ["x", "a"], ["t"], name="/a1"), helper.make_node("Add", ["t", "b"], ["y"], name="/a2")]
    outputs = [_vi("y", None)] + ([_vi("t", None)] if shared else [])
    inits = [_init("a", RNG.standard_normal(3).astype(np.float32)), _init("b", RNG.standard_normal(3).astype(np.float32))]
    model = _model(nodes, [_vi("x", [2, 3])], outputs, inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Add": 2 if shared else 1}
    _assert_same(before, result.model, {"x": (2, 3)})


# ---------------------------------------------------------------- layout and no-ops
def test_transposes_cancel_and_merge():
    t1 = helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1], name="/t1")
    t2 = helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2], name="/t2")
    relu = helper.make_node("Relu", ["t2"], ["y"], name="/relu")
    model = _model([t1, t2, relu], [_vi("x", [1, 2, 3, 4])], [_vi("y", None)])
    before, result = _fuse(model)
    assert _ops(result.model) == {"Relu": 1}
    _assert_same(before, result.model, {"x": (1, 2, 3, 4)})
    t2b = helper.make_node("Transpose", ["t1"], ["y"], perm=[1, 0, 2, 3], name="/t2")
    model = _model([t1, t2b], [_vi("x", [1, 2, 3, 4])], [_vi("y", None)])
    before, result = _fuse(model)
    assert _ops(result.model) == {"Transpose": 1}
    _assert_same(before, result.model, {"x": (1, 2, 3, 4)})


def test_reshape_chain_and_noops():
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="/flat"),
             helper.make_node("Reshape", ["f", "s"], ["r"], name="/reshape"),
             helper.make_node("Pad", ["r", "pads"], ["p"], name="/pad"),
             helper.make_node("Mul", ["p", "one"], ["y"], name="/mul1")]
    inits = [_init("s", np.array([2, 12], np.int64)), _init("pads", np.zeros(4, np.int64)),
             _init("one", np.ones(1, np.float32))]
    model = _model(nodes, [_vi("x", [2, 3, 4])], [_vi("y", None)], inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Reshape": 1}
    _assert_same(before, result.model, {"x": (2, 3, 4)})


@pytest.mark.parametrize("mid,merged", [(TensorProto.DOUBLE, True), (TensorProto.FLOAT16, False)])
def test_cast_chain(mid, merged):
    nodes = [helper.make_node("Cast", ["x"], ["c1"], to=mid, name="/c1"),
             helper.make_node("Cast", ["c1"], ["c2"], to=TensorProto.FLOAT, name="/c2"),
             helper.make_node("Relu", ["c2"], ["y"], name="/relu")]
    model = _model(nodes, [_vi("x", [3])], [_vi("y", None)])
    before, result = _fuse(model)
    if merged:
        assert _ops(result.model) == {"Relu": 1}
        _assert_same(before, result.model, {"x": (3,)})
    else:
        _unchanged(before, result)


def test_cse_merges_identical_nodes_but_keeps_graph_outputs():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="/r1"), helper.make_node("Relu", ["x"], ["b"], name="/r2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="/add")]
    model = _model(nodes, [_vi("x", [3])], [_vi("y", None)])
    before, result = _fuse(model)
    assert _ops(result.model) == {"Relu": 1, "Add": 1}
    _assert_same(before, result.model, {"x": (3,)})
    model = _model(nodes[:2], [_vi("x", [3])], [_vi("a", None), _vi("b", None)])
    before, result = _fuse(model)
    _unchanged(before, result)


def test_reshape_target_from_shape_becomes_constant():
    nodes = [helper.make_node("Shape", ["x"], ["sh"], name="/shape"),
             helper.make_node("Gather", ["sh", "i0"], ["d0"], name="/g0"),
             helper.make_node("Unsqueeze", ["d0", "ax"], ["u0"], name="/u0"),
             helper.make_node("Concat", ["u0", "rest"], ["target"], axis=0, name="/cat"),
             helper.make_node("Reshape", ["x", "target"], ["y"], name="/reshape")]
    inits = [_init("i0", np.array(0, np.int64)), _init("ax", np.array([0], np.int64)),
             _init("rest", np.array([-1], np.int64))]
    model = _model(nodes, [_vi("x", ["N", 3, 4])], [_vi("y", None)], inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Reshape": 1}
    _assert_same(before, result.model, {"x": (2, 3, 4)})


@pytest.mark.parametrize("a,b", [([0], [0]), ([1], [0, 3]), ([-1], [1])])
def test_unsqueeze_chain_merged(a, b):
    nodes = [helper.make_node("Unsqueeze", ["x", "a"], ["u"], name="/u1"),
             helper.make_node("Unsqueeze", ["u", "b"], ["v"], name="/u2"),
             helper.make_node("Relu", ["v"], ["y"], name="/relu")]
    inits = [_init("a", np.array(a, np.int64)), _init("b", np.array(b, np.int64))]
    model = _model(nodes, [_vi("x", ["N", 3])], [_vi("y", None)], inits)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Unsqueeze": 1, "Relu": 1}
    _assert_same(before, result.model, {"x": (2, 3)})


@pytest.mark.parametrize("axes2,merged", [([2], True), ([1], False)])
def test_slice_chain_on_other_axes_merged(axes2, merged):
    nodes = [helper.make_node("Slice", ["x", "s1", "e1", "a1"], ["t"], name="/s1"),
             helper.make_node("Slice", ["t", "s2", "e2", "a2"], ["y"], name="/s2")]
    inits = [_init("s1", np.array([1], np.int64)), _init("e1", np.array([3], np.int64)), _init("a1", np.array([1], np.int64)),
             _init("s2", np.array([1], np.int64)), _init("e2", np.array([2], np.int64)), _init("a2", np.array(axes2, np.int64))]
    model = _model(nodes, [_vi("x", [2, 4, 5])], [_vi("y", None)], inits)
    before, result = _fuse(model)
    assert _ops(result.model) == ({"Slice": 1} if merged else {"Slice": 2})
    _assert_same(before, result.model, {"x": (2, 4, 5)})


# ---------------------------------------------------------------- pattern fusion
def _layernorm_nodes(mul_form=False):
    sq = (helper.make_node("Mul", ["d", "d"], ["p"], name="/sq") if mul_form
          else helper.make_node("Pow", ["d", "two"], ["p"], name="/pow"))
    return [helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1], name="/rm1"),
            helper.make_node("Sub", ["x", "m"], ["d"], name="/sub"), sq,
            helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1], name="/rm2"),
            helper.make_node("Add", ["v", "eps"], ["ve"], name="/addeps"),
            helper.make_node("Sqrt", ["ve"], ["s"], name="/sqrt"),
            helper.make_node("Div", ["d", "s"], ["n"], name="/div"),
            helper.make_node("Mul", ["n", "gamma"], ["g"], name="/mulg"),
            helper.make_node("Add", ["g", "beta"], ["y"], name="/addb")]


@pytest.mark.parametrize("mul_form", [False, True])
def test_layernorm_fused_opset17(mul_form):
    inits = [_init("two", np.array(2.0, np.float32)), _init("eps", np.array(1e-5, np.float32)),
             _init("gamma", RNG.standard_normal(8).astype(np.float32)),
             _init("beta", RNG.standard_normal(8).astype(np.float32))]
    model = _model(_layernorm_nodes(mul_form), [_vi("x", [2, 3, 8])], [_vi("y", None)], inits, opset=17)
    before, result = _fuse(model)
    assert _ops(result.model) == {"LayerNormalization": 1}
    _assert_same(before, result.model, {"x": (2, 3, 8)})


def test_layernorm_needs_opset_or_upgrade():
    inits = [_init("two", np.array(2.0, np.float32)), _init("eps", np.array(1e-5, np.float32)),
             _init("gamma", RNG.standard_normal(8).astype(np.float32)),
             _init("beta", RNG.standard_normal(8).astype(np.float32))]
    model = _model(_layernorm_nodes(), [_vi("x", [2, 3, 8])], [_vi("y", None)], inits, opset=13)
    before, result = _fuse(model)
    assert "LayerNormalization" not in _ops(result.model)
    assert any("opset 13 < 17" in n for n in result.notes)
    before, result = _fuse(before, upgrade_opset=True)
    assert _ops(result.model) == {"LayerNormalization": 1} and result.stats["opset_upgraded_to"] == 17
    _assert_same(before, result.model, {"x": (2, 3, 8)})


@pytest.mark.parametrize("opset,expected", [(12, {"HardSigmoid": 1, "Mul": 1}), (14, {"HardSwish": 1})])
def test_hardswish_form(opset, expected):
    nodes = [helper.make_node("Add", ["x", "three"], ["a"], name="/add3"),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="/clip"),
             helper.make_node("Mul", ["x", "c"], ["m"], name="/mul"),
             helper.make_node("Div", ["m", "six"], ["y"], name="/div6")]
    inits = [_init("three", np.array(3.0, np.float32)), _init("zero", np.array(0.0, np.float32)),
             _init("six", np.array(6.0, np.float32))]
    model = _model(nodes, [_vi("x", [2, 16])], [_vi("y", None)], inits, opset=opset)
    before, result = _fuse(model)
    assert _ops(result.model) == expected
    _assert_same(before, result.model, {"x": (2, 16)})


@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_gelu_erf_forms_need_opset20(form):
    pre = [helper.make_node("Div", ["x", "sqrt2"], ["d"], name="/div"),
           helper.make_node("Erf", ["d"], ["e"], name="/erf"),
           helper.make_node("Add", ["e", "one"], ["a"], name="/add1")]
    tail = {"a": [helper.make_node("Mul", ["x", "a"], ["m"], name="/m1"), helper.make_node("Mul", ["m", "half"], ["y"], name="/m2")],
            "b": [helper.make_node("Mul", ["x", "half"], ["h"], name="/h"), helper.make_node("Mul", ["h", "a"], ["y"], name="/m1")],
            "c": [helper.make_node("Mul", ["a", "half"], ["h"], name="/h"), helper.make_node("Mul", ["x", "h"], ["y"], name="/m1")]}[form]
    inits = [_init("sqrt2", np.array(np.sqrt(2), np.float32)), _init("one", np.array(1.0, np.float32)),
             _init("half", np.array(0.5, np.float32))]
    model = _model(pre + tail, [_vi("x", [2, 16])], [_vi("y", None)], inits, opset=20)
    before, result = _fuse(model)
    assert _ops(result.model) == {"Gelu": 1}
    _assert_same(before, result.model, {"x": (2, 16)})
    model = _model(pre + tail, [_vi("x", [2, 16])], [_vi("y", None)], inits, opset=17)
    before, result = _fuse(model)
    assert "Gelu" not in _ops(result.model)


def test_fused_conv_only_for_contrib_targets():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="/conv"), helper.make_node("Relu", ["c"], ["y"], name="/relu")]
    model = _model(nodes, [_vi("x", [1, 2, 5, 5])], [_vi("y", None)],
                   [_init("W", RNG.standard_normal((4, 2, 3, 3)).astype(np.float32))])
    before, result = _fuse(model)
    _unchanged(before, result)
    target = SimpleNamespace(contrib_domains=("com.microsoft",), supports_op=lambda op, domain="": True)
    before, result = _fuse(before, PassContext(target=target))
    assert _ops(result.model) == {"FusedConv": 1}
    assert any(o.domain == "com.microsoft" for o in result.model.opset_import)
    feeds = {"x": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)}
    assert allclose_relative([run_model(before, feeds)["y"]], [run_model(result.model, feeds)["y"]])[0]


def test_subgraph_bodies_are_fused_and_stay_valid():
    then_nodes = [helper.make_node("Transpose", ["x"], ["t1"], perm=[1, 0], name="/then/t1"),
                  helper.make_node("Transpose", ["t1"], ["t2"], perm=[1, 0], name="/then/t2"),
                  helper.make_node("Relu", ["t2"], ["out_then"], name="/then/relu")]
    then_g = helper.make_graph(then_nodes, "then", [], [_vi("out_then", [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["out_else"], name="/else/neg")], "else", [],
                               [_vi("out_else", [2, 3])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="/if")
    model = _model([node], [_vi("cond", [], TensorProto.BOOL), _vi("x", [2, 3])], [_vi("y", [2, 3])])
    before, result = _fuse(model)
    assert result.stats.get("transposes_merged") == 1
    onnx.checker.check_model(result.model, full_check=True)
    feeds = {"cond": np.array(True), "x": RNG.standard_normal((2, 3)).astype(np.float32)}
    np.testing.assert_allclose(run_model(before, feeds)["y"], run_model(result.model, feeds)["y"])


# ---------------------------------------------------------------- real model
def test_digits_cnn_bn_count_goes_to_zero_outputs_equal():
    from models import zoo

    model = onnx.load(str(zoo.digits_cnn()))
    assert _ops(model)["BatchNormalization"] == 3
    before = onnx.ModelProto()
    before.CopyFrom(model)
    cleaned = create_pass("cleanup").run(model, PassContext()).model
    result = create_pass("fuse").run(cleaned, PassContext())
    assert _ops(result.model)["BatchNormalization"] == 0
    data = zoo.digits_data("test")
    name = before.graph.input[0].name
    x = next(iter(data.values())) if name not in data else data[name]
    feeds = {name: np.asarray(x[:64], np.float32)}
    ref, got = run_model(before, feeds), run_model(result.model, feeds)
    for key, value in ref.items():
        assert allclose_relative([value], [got[key]])[0]


# ---------------------------------------------------------------- gelu (tanh), softmax, constants
def _gelu_tanh_model(cube_form, opset):
    cube = ([helper.make_node("Pow", ["x", "three"], ["x3"], name="/pow")] if cube_form == "pow" else
            [helper.make_node("Mul", ["x", "x"], ["x2"], name="/sq"), helper.make_node("Mul", ["x2", "x"], ["x3"], name="/cube")])
    nodes = cube + [helper.make_node("Mul", ["x3", "c"], ["t"], name="/t"),
                    helper.make_node("Add", ["x", "t"], ["inner"], name="/inner"),
                    helper.make_node("Mul", ["inner", "k"], ["s"], name="/s"),
                    helper.make_node("Tanh", ["s"], ["th"], name="/tanh"),
                    helper.make_node("Add", ["th", "one"], ["a"], name="/add1"),
                    helper.make_node("Mul", ["x", "a"], ["m"], name="/m1"),
                    helper.make_node("Mul", ["m", "half"], ["y"], name="/m2")]
    inits = [_init("three", np.array(3.0, np.float32)), _init("c", np.array(0.044715, np.float32)),
             _init("k", np.array(np.sqrt(2 / np.pi), np.float32)), _init("one", np.array(1.0, np.float32)),
             _init("half", np.array(0.5, np.float32))]
    return _model(nodes, [_vi("x", [2, 16])], [_vi("y", None)], inits, opset=opset)


@pytest.mark.parametrize("cube_form", ["pow", "mul"])
def test_gelu_tanh_form_fused_with_approximate_tanh(cube_form):
    before, result = _fuse(_gelu_tanh_model(cube_form, 20))
    assert _ops(result.model) == {"Gelu": 1}
    assert helper.get_attribute_value(result.model.graph.node[0].attribute[0]) == b"tanh"
    _assert_same(before, result.model, {"x": (2, 16)})
    before, result = _fuse(_gelu_tanh_model(cube_form, 17))
    assert "Gelu" not in _ops(result.model)
    assert any("opset 17 < 20" in n for n in result.notes)


def test_gelu_below_opset20_uses_contrib_kernels_only_on_opted_in_targets():
    target = SimpleNamespace(contrib_domains=("com.microsoft",), supports_op=lambda op, domain="": True)
    before, result = _fuse(_gelu_tanh_model("pow", 17), PassContext(target=target))
    assert _ops(result.model) == {"FastGelu": 1}
    assert result.model.graph.node[0].domain == "com.microsoft"
    _assert_same(before, result.model, {"x": (2, 16)})


def _softmax_model(axis, shifted=True, opset=13, extra_reader=False):
    axes = _init("axes", np.array([axis], np.int64))
    reduce_max = (helper.make_node("ReduceMax", ["x"], ["mx"], axes=[axis], keepdims=1, name="/max") if opset < 18 else
                  helper.make_node("ReduceMax", ["x", "axes"], ["mx"], keepdims=1, name="/max"))
    nodes = ([reduce_max, helper.make_node("Sub", ["x", "mx"], ["d"], name="/sub")] if shifted else [])
    nodes += [helper.make_node("Exp", ["d" if shifted else "x"], ["e"], name="/exp"),
              (helper.make_node("ReduceSum", ["e"], ["s"], axes=[axis], keepdims=1, name="/sum") if opset < 13 else
               helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=1, name="/sum")),
              helper.make_node("Div", ["e", "s"], ["y"], name="/div")]
    outputs = [_vi("y", None)] + ([_vi("e", None)] if extra_reader else [])
    return _model(nodes, [_vi("x", [2, 3, 4])], outputs, [axes], opset=opset)


@pytest.mark.parametrize("axis", [1, -1, 2])
@pytest.mark.parametrize("shifted", [True, False])
def test_softmax_form_fused(axis, shifted):
    before, result = _fuse(_softmax_model(axis, shifted))
    assert _ops(result.model) == {"Softmax": 1}
    assert helper.get_attribute_value(result.model.graph.node[0].attribute[0]) == axis % 3
    _assert_same(before, result.model, {"x": (2, 3, 4)})


def test_softmax_form_not_fused_when_exp_is_read_elsewhere_or_axis_inner_before_opset13():
    before, result = _fuse(_softmax_model(-1, extra_reader=True))
    assert "Softmax" not in _ops(result.model)
    before, result = _fuse(_softmax_model(1, opset=11))
    assert "Softmax" not in _ops(result.model)
    assert any("flattens" in n for n in result.notes)
    before, result = _fuse(_softmax_model(2, opset=11))
    assert _ops(result.model) == {"Softmax": 1}
    _assert_same(before, result.model, {"x": (2, 3, 4)})


def test_transpose_of_an_ir3_weight_input_is_folded():
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0], name="/t"),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="/mm")]
    graph = helper.make_graph(nodes, "g", [_vi("x", [2, 4]), _vi("w", [3, 4])], [_vi("y", [2, 3])], [_init("w", w)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    before, result = _fuse(model)
    assert _ops(result.model) == {"MatMul": 1}
    weight = next(t for t in result.model.graph.initializer if t.name == result.model.graph.node[0].input[1])
    np.testing.assert_array_equal(numpy_helper.to_array(weight), w.T)
    assert {v.name for v in result.model.graph.input} == {"x", weight.name}  # IR 3: weights stay listed inputs
    _assert_same(before, result.model, {"x": (2, 4)})
