"""The `quantize` pass: QDQ placement per op, scales, biases, modes, int4, exclude, numerics."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_model, tensor
from onnx import TensorProto, helper, numpy_helper

from graphopt.passes import PassContext, create_pass
from graphopt.quantization import params as qp

RNG = np.random.default_rng(0)


def _w(*shape):
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _feeds(model, n=4, batch=4):
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        feed = {}
        for i in model.graph.input:
            if i.name in {t.name for t in model.graph.initializer}:
                continue
            shape = [d.dim_value or batch for d in i.type.tensor_type.shape.dim]
            feed[i.name] = rng.standard_normal(shape).astype(np.float32)
        out.append(feed)
    return out


def _quantize(model, data=None, **options):
    return create_pass("quantize", options).run(model, PassContext(calibration_data=data or _feeds(model)))


def _ops(model):
    return Counter(n.op_type for n in model.graph.node)


def _run(model, feed):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def _cosine(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _dq_of(model, reader_op, index):
    made = {o: n for n in model.graph.node for o in n.output}
    reader = next(n for n in model.graph.node if n.op_type == reader_op)
    return made[reader.input[index]]


def conv_relu_model(bias=True):
    nodes = [helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 4, 6, 6])],
                      {"w": _w(8, 3, 3, 3), "b": _w(8), "w2": _w(4, 8, 3, 3)})


def test_conv_relu_conv_placement_and_relu_folding():
    model = conv_relu_model()
    result = _quantize(model)
    ops = _ops(result.model)
    assert ops == {"Conv": 2, "QuantizeLinear": 3, "DequantizeLinear": 3 + 2 + 1}  # acts, 2 weights, 1 bias
    assert "Relu" not in ops and result.stats["relu_clip_folded"] == 1
    relu_q = next(n for n in result.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r")
    assert _inits(result.model)[relu_q.input[2]] == 0  # zero point = qmin: the Q is the ReLU
    feed = _feeds(model, 1)[0]
    assert _cosine(_run(model, feed), _run(result.model, feed)) > 0.999
    assert result.stats["nodes_quantized"] == {"Conv": 2}
    assert set(result.stats["weight_error"]) == {"Conv#0", "Conv#2"}


def test_per_channel_scales_and_int32_bias_scale():
    result = _quantize(conv_relu_model())
    inits = _inits(result.model)
    w_dq = _dq_of(result.model, "Conv", 1)
    assert inits[w_dq.input[0]].dtype == np.int8 and inits[w_dq.input[1]].shape == (8,)
    assert {a.name: a.i for a in w_dq.attribute}["axis"] == 0
    b_dq = _dq_of(result.model, "Conv", 2)
    x_dq = _dq_of(result.model, "Conv", 0)
    assert inits[b_dq.input[0]].dtype == np.int32
    np.testing.assert_allclose(inits[b_dq.input[1]], inits[x_dq.input[1]] * inits[w_dq.input[1]], rtol=1e-6)


@pytest.mark.parametrize("op,shape,attrs,axis", [
    ("ConvTranspose", (3, 5, 2, 2), {}, 1),
    ("Gemm", (6, 5), {"transB": 1}, 0),
    ("Gemm", (5, 6), {"transB": 0}, 1),
    ("MatMul", (5, 6), {}, 1),
])
def test_per_channel_axis_from_the_axes_table(op, shape, attrs, axis):
    if op == "ConvTranspose":
        x, out = tensor("x", ["N", 3, 4, 4]), tensor("h", ["N", 5, 6, 6])
        inits = {"w": _w(*shape), "w2": _w(5, 5, 2, 2)}
    else:
        x, out = tensor("x", ["N", 5]), tensor("h", ["N", 6])
        inits = {"w": _w(*shape), "w2": _w(6, 6)}
    nodes = [helper.make_node(op, ["x", "w"], ["y"], **attrs), helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node(op, ["r", "w2"], ["h"], **attrs)]
    model = make_model(nodes, [x], [out], inits)
    result = _quantize(model)
    dq = _dq_of(result.model, op, 1)
    assert {a.name: a.i for a in dq.attribute}.get("axis") == axis
    assert _inits(result.model)[dq.input[1]].shape == (shape[axis],)
    feed = _feeds(model, 1)[0]
    assert _cosine(_run(model, feed), _run(result.model, feed)) > 0.99


def test_matmul_output_stays_float_when_no_quantized_reader():
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Softmax", ["y"], ["z"])],
                       [tensor("x", ["N", 8])], [tensor("z", ["N", 4])], {"w": _w(8, 4)})
    ops = _ops(_quantize(model).model)
    assert ops == {"MatMul": 1, "Softmax": 1, "QuantizeLinear": 1, "DequantizeLinear": 2}


def test_activation_matmul_quantizes_both_operands():
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                       [tensor("a", ["N", 4, 8]), tensor("b", ["N", 8, 4])], [tensor("y", ["N", 4, 4])])
    ops = _ops(_quantize(model, activation_matmul=True).model)
    assert ops == {"MatMul": 1, "QuantizeLinear": 2, "DequantizeLinear": 2}
    default = _quantize(model)  # the cpu default: activation x activation MatMuls stay float
    assert not default.changed and any("activation x activation" in n for n in default.notes)


def residual_model():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Concat", ["s", "a"], ["c"], axis=1),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    return make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 3])],
                      {"w1": _w(4, 2, 3, 3), "w2": _w(4, 2, 3, 3), "wf": _w(3, 32), "bf": _w(3)})


def test_add_concat_pool_flatten_placement_with_shared_scales():
    model = residual_model()
    result = _quantize(model)
    assert result.stats["nodes_quantized"] == {"Add": 1, "Concat": 1, "Conv": 2, "Flatten": 1, "Gemm": 1,
                                               "MaxPool": 1}
    qs = {n.input[0]: n for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
    assert set(qs) == {"x", "a", "b", "s", "c", "p", "f"}  # Gemm output is a float graph output
    inits = _inits(result.model)
    shared = {float(inits[qs[t].input[1]]) for t in ("s", "a", "c", "p", "f")}
    assert len(shared) == 1  # Concat inputs/output and pass-through ops share one scale
    feed = _feeds(model, 1)[0]
    assert _cosine(_run(model, feed), _run(result.model, feed)) > 0.995


def test_activation_params_hand_computed():
    p = qp.activation_params(-1.0, 3.0, "uint8", symmetric=False)
    assert float(p.scale) == pytest.approx(4.0 / 255) and int(p.zero_point) == 64
    p = qp.activation_params(-1.0, 3.0, "int8", symmetric=True)
    assert float(p.scale) == pytest.approx(3.0 / 127.5) and int(p.zero_point) == 0
    p = qp.activation_params(0.0, 2.0, "int8", symmetric=False)
    assert int(p.zero_point) == -128


def test_int8_activations_symmetric_keep_relu():
    model = conv_relu_model()
    result = _quantize(model, activation_type="int8", symmetric_activations=True)
    ops = _ops(result.model)
    assert ops["Relu"] == 1 and result.stats["relu_clip_folded"] == 0 and result.stats["relu_clip_before_q"] == 1
    zps = [numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name.endswith("zero_point")]
    assert all(z.dtype == np.int8 and not z.any() for z in zps)
    # Conv -> Relu -> Q -> DQ -> Conv: the Q takes the Relu's range, the Conv output is not Q/DQ'd
    graph = result.model.graph
    producer = {o: n for n in graph.node for o in n.output}
    relu = next(n for n in graph.node if n.op_type == "Relu")
    assert producer[relu.input[0]].op_type == "Conv"
    assert [n.op_type for n in graph.node if relu.output[0] in n.input] == ["QuantizeLinear"]
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    assert all(n.output[0] in read for n in graph.node)  # no dead Q/DQ pair
    feed = _feeds(model)[0]
    assert _cosine(_run(model, feed), _run(result.model, feed)) > 0.99
    # integer runtimes fuse the kept Relu: nothing falls back to the host on the npu target
    from graphopt.targets import estimate_cost

    assert not estimate_cost(result.model, "npu")["unsupported_ops"]


def test_dynamic_mode_runs_in_onnxruntime():
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                        helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1)],
                       [tensor("x", ["N", 16])], [tensor("y", ["N", 4])],
                       {"w": _w(16, 8), "w2": _w(4, 8), "b2": _w(4)})
    result = _quantize(model, mode="dynamic")
    ops = _ops(result.model)
    assert ops["DynamicQuantizeLinear"] == 2 and ops["MatMulInteger"] == 2 and "QuantizeLinear" not in ops
    feed = _feeds(model, 1)[0]
    assert _cosine(_run(model, feed), _run(result.model, feed)) > 0.999


def test_weight_only_int8_and_int4_blocks():
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", ["N", 64])],
                       [tensor("y", ["N", 16])], {"w": _w(64, 16)})
    feed = _feeds(model, 1)[0]
    int8 = _quantize(model, mode="weight-only")
    assert _ops(int8.model) == {"MatMul": 1, "DequantizeLinear": 1}
    int4 = _quantize(model, mode="weight-only", weight_type="int4", block_size=16)
    dq = _dq_of(int4.model, "MatMul", 1)
    attrs = {a.name: a.i for a in dq.attribute}
    assert attrs == {"axis": 0, "block_size": 16}
    stored = next(t for t in int4.model.graph.initializer if t.name == dq.input[0])
    assert stored.data_type == TensorProto.INT4 and len(stored.raw_data) == 64 * 16 // 2  # two per byte
    assert _inits(int4.model)[dq.input[1]].shape == (4, 16)
    assert int4.model.opset_import[0].version >= 21
    ref = _run(model, feed)
    assert _cosine(ref, _run(int8.model, feed)) > 0.9999
    assert _cosine(ref, _run(int4.model, feed)) > 0.99


def test_int4_block_packing_roundtrip():
    w = _w(40, 3)
    q, s = qp.weight_int4_blocks(w, axis=0, block=16)
    assert s.shape == (3, 3) and q.min() >= -7 and q.max() <= 7
    np.testing.assert_allclose(qp.dequantize_blocks(q, s, 0, 16), w, atol=float(s.max()) / 2 + 1e-7)


@pytest.mark.parametrize("exclude", [["second"], ["Gemm"], ["sec.*"]])
def test_exclude_by_name_type_and_regex(exclude):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], name="first"),
             helper.make_node("Gemm", ["h", "w2"], ["y"], name="second")]
    model = make_model(nodes, [tensor("x", ["N", 8])], [tensor("y", ["N", 4])], {"w": _w(8, 8), "w2": _w(8, 4)})
    result = _quantize(model, exclude=exclude)
    quantized = result.stats.get("nodes_quantized", {})
    if exclude == ["Gemm"]:
        assert not result.changed and result.model is model
    else:
        assert quantized == {"Gemm": 1} and "second: kept in float (excluded)" in result.notes


def test_no_quantizable_op_leaves_model_unchanged():
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Softmax", ["r"], ["y"])],
                       [tensor("x", ["N", 4])], [tensor("y", ["N", 4])])
    before = model.SerializeToString()
    result = _quantize(model)
    assert not result.changed and result.model.SerializeToString() == before
    assert any("no quantizable node" in n for n in result.notes)


def test_synthetic_calibration_is_noted():
    result = create_pass("quantize").run(conv_relu_model(), PassContext())
    assert result.changed and any("synthetic" in n for n in result.notes)


def test_mask_like_range_stays_float():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "mask"], ["s"]),
             helper.make_node("MatMul", ["s", "w2"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", 8]), tensor("mask", ["N", 8])], [tensor("y", ["N", 4])],
                       {"w": _w(8, 8), "w2": _w(8, 4)})
    data = [{"x": RNG.standard_normal((4, 8)).astype(np.float32),
             "mask": np.where(RNG.random((4, 8)) > 0.5, 0, -3.4e38).astype(np.float32)}]
    result = _quantize(model, data)
    assert "Add" not in result.stats["nodes_quantized"]
    assert any("mask-like" in n for n in result.notes)


def test_mixed_precision_keeps_sensitive_layers_float():
    model = conv_relu_model()
    data = _feeds(model)
    strict = _quantize(model, data, min_cosine=0.999999)
    info = strict.stats["mixed_precision"]
    assert info["kept_float"] and set(info["sensitivity"]) == {"Conv#0", "Conv#2"}
    loose = _quantize(model, data, min_cosine=0.5)
    assert loose.stats["mixed_precision"]["kept_float"] == []


def test_digits_cnn_accuracy_within_half_a_point():
    from models import zoo

    model = onnx.load(str(zoo.digits_cnn()))
    calib, test = zoo.digits_data("calib"), zoo.digits_data("test")
    result = _quantize(model, [{"input": calib["input"]}], calibration="percentile")
    acc = [float((_run(m, {"input": test["input"]}).argmax(1) == test["label"]).mean())
           for m in (model, result.model)]
    assert acc[1] >= acc[0] - 0.005
    onnx.checker.check_model(result.model, full_check=True)


def _zero_points(model):
    """{tensor: zero point array} of every activation QuantizeLinear."""
    inits = _inits(model)
    return {n.input[0]: inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize("target, dtype, symmetric", [("cpu", np.uint8, False), ("gpu", np.int8, True),
                                                      ("npu", np.int8, True), ("mcu", np.int8, False)])
def test_target_quantization_defaults(target, dtype, symmetric):
    from graphopt.targets import load_target

    model = conv_relu_model()
    data = _feeds(model)
    result = create_pass("quantize").run(model, PassContext(target=load_target(target), calibration_data=data))
    zps = _zero_points(result.model)
    assert zps and all(z.dtype == dtype for z in zps.values())
    if symmetric:  # zero point 0, and the ReLU is kept (a symmetric range cannot fold it)
        assert all(int(z) == 0 for z in zps.values()) and _ops(result.model)["Relu"] == 1
    else:  # the folded ReLU's range starts at 0: zero point = qmin
        assert int(zps["r"]) == np.iinfo(dtype).min and "Relu" not in _ops(result.model)
    assert result.stats["activation_type"] == np.dtype(dtype).name
    assert result.stats["target_defaults"]["activation_type"] == np.dtype(dtype).name


def test_explicit_options_override_target_defaults():
    from graphopt.targets import load_target

    model = conv_relu_model()
    data = _feeds(model)
    ctx = PassContext(target=load_target("gpu"), calibration_data=data)
    result = create_pass("quantize", {"activation_type": "uint8", "symmetric_activations": "false"}).run(model, ctx)
    zps = _zero_points(result.model)
    assert all(z.dtype == np.uint8 for z in zps.values()) and int(zps["r"]) == 0
    chosen = result.stats["target_defaults"]
    assert "activation_type" not in chosen and "symmetric_activations" not in chosen
    assert chosen["per_channel"] is True  # the target still decides what was not given
    # the same pass object follows the target of each run, never the previous one's
    again = create_pass("quantize", {"activation_type": "uint8"})
    again.run(model, PassContext(target=load_target("gpu"), calibration_data=data))
    cpu = again.run(model, PassContext(target=load_target("cpu"), calibration_data=data))
    assert cpu.stats["symmetric_activations"] is False


def transformer_ffn_model():
    """LayerNorm-like input with two outlier channels -> MatMul, plus a residual Add."""
    nodes = [helper.make_node("Mul", ["x", "gain"], ["h"]),
             helper.make_node("MatMul", ["h", "w1"], ["u"]),
             helper.make_node("Add", ["u", "h"], ["y"])]
    gain = np.ones(16, np.float32)
    gain[[3, 11]] = 40.0
    return make_model(nodes, [tensor("x", ["N", 5, 16])], [tensor("y", ["N", 5, 16])],
                      {"gain": gain, "w1": _w(16, 16)})


def test_float_readers_read_the_float_tensor():
    model = transformer_ffn_model()
    result = _quantize(model, smooth_alpha=0.0)
    made = {o: n for n in result.model.graph.node for o in n.output}
    add = next(n for n in result.model.graph.node if n.op_type == "Add")
    matmul = next(n for n in result.model.graph.node if n.op_type == "MatMul")
    assert made[matmul.input[0]].op_type == "DequantizeLinear"
    assert "h" in add.input and made["h"].op_type == "Mul"  # the residual is exact


def test_smoothing_moves_outlier_channels_into_weights():
    model = transformer_ffn_model()
    data = [{"x": RNG.standard_normal((8, 5, 16)).astype(np.float32)} for _ in range(2)]
    smooth = _quantize(model, data)
    plain = _quantize(model, data, smooth_alpha=0.0)
    info = smooth.stats["smoothing"]["tensors"]
    assert list(info) == ["h"] and info["h"]["channel_spread"] >= 8
    # X @ W == (X / s) @ (s W): a Mul on the quantized branch feeds the Q, the residual reads h
    made = {o: n for n in smooth.model.graph.node for o in n.output}
    q = next(n for n in smooth.model.graph.node if n.op_type == "QuantizeLinear")
    assert made[q.input[0]].op_type == "Mul" and made[q.input[0]].input[0] == "h"
    test = {"x": RNG.standard_normal((4, 5, 16)).astype(np.float32)}
    ref = _run(model, test)
    err = [np.linalg.norm(_run(m.model, test) - ref) / np.linalg.norm(ref) for m in (smooth, plain)]
    assert err[0] < 0.5 * err[1]
    assert not any(v.name for v in smooth.model.graph.value_info)  # inferred shapes not written out


def test_quantize_in_a_pipeline_runs_after_cleanup_and_fuse():
    from graphopt.api import resolve_pipeline
    from graphopt.pipeline_spec import parse_inline, with_quantize_prerequisites

    def names(text):
        return [s.name for s in with_quantize_prerequisites(parse_inline(text))[0]]

    assert names("quantize") == ["cleanup", "fuse", "quantize"]
    assert names("cleanup,quantize{mode=dynamic}") == ["cleanup", "fuse", "quantize"]
    assert names("fuse,quantize") == ["fuse", "quantize"]
    assert names("quantize{prepare=false}") == ["quantize"]
    assert names("cleanup,fuse") == ["cleanup", "fuse"]
    config, _ = resolve_pipeline("quantize")
    assert [s.name for s in config.passes] == ["cleanup", "fuse", "quantize"] and config.notes


def test_fuse_before_quantize_leaves_out_contrib_families():
    import graphopt
    from graphopt.pipeline_spec import CONTRIB_FAMILIES, parse_inline, with_quantize_prerequisites

    specs, note = with_quantize_prerequisites(parse_inline("cleanup,fuse,quantize"))
    assert not set(CONTRIB_FAMILIES) & set(specs[1].options["rules"]) and "contrib families" in note
    specs, note = with_quantize_prerequisites(parse_inline("fuse{rules=contrib},quantize"))
    assert specs[0].options["rules"] in ("contrib", ["contrib"]) and note is None  # the user's choice stands
    specs, note = with_quantize_prerequisites(parse_inline("fuse,quantize"), contrib=False)
    assert "rules" not in specs[0].options and note is None  # npu/mcu: contrib families do nothing there

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])], {"w": _w(4, 3, 3, 3), "b": _w(4)})
    data = [{"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    result = graphopt.optimize(model, passes="cleanup,fuse,quantize", target="cpu", calibration_data=data,
                               inputs=data, thresholds={"min_cosine": 0.98})
    ops = _ops(result.model)
    assert "FusedConv" not in ops and ops["Conv"] == 1 and ops["QuantizeLinear"] >= 1
    assert any("contrib families" in w for w in result.report["warnings"])


def test_optimize_with_quantize_alone_folds_batchnorm_first():
    import graphopt

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])],
                       {"w": _w(4, 3, 3, 3), "g": np.full(4, 1.5, np.float32), "b": _w(4),
                        "m": _w(4), "v": np.full(4, 0.5, np.float32)})
    data = [{"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    result = graphopt.optimize(model, passes="quantize", calibration_data=data, inputs=data,
                               thresholds={"min_cosine": 0.98})
    assert [p["name"] for p in result.report["passes"]] == ["cleanup", "fuse", "quantize"]
    assert any("inserted cleanup,fuse{rules=" in w for w in result.report["warnings"])
    assert "contrib" not in result.report["passes"][1]["options"]["rules"]
    ops = _ops(result.model)
    assert "BatchNormalization" not in ops and ops["Conv"] == 1 and ops["QuantizeLinear"] == 2


def test_smoothing_skips_inputs_inside_integer_chains():
    from graphopt.ir import infer_shapes
    from graphopt.quantization.placement import make_plan
    from graphopt.quantization.smooth import candidates

    cnn = infer_shapes(residual_model())  # ... MaxPool -> Flatten -> Gemm: one integer chain
    assert candidates(cnn, make_plan(cnn, [], set(), True)) == {}
    ffn = infer_shapes(transformer_ffn_model())  # Mul (float op) -> MatMul
    assert list(candidates(ffn, make_plan(ffn, [], set(), True))) == ["h"]
    assert "Mul" not in _ops(_quantize(residual_model()).model)


def test_contrib_fused_conv_is_named_in_the_notes():
    nodes = [helper.make_node("FusedConv", ["x", "w"], ["c"], domain="com.microsoft", activation="Relu"),
             helper.make_node("Conv", ["c", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [tensor("x", ["N", 3, 8, 8])], [tensor("y", ["N", 4, 4, 4])],
                              [numpy_helper.from_array(_w(8, 3, 3, 3), "w"), numpy_helper.from_array(_w(4, 8, 3, 3), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    result = _quantize(model)
    assert any("FusedConv" in n and "stay float" in n for n in result.notes)
    assert "FusedConv" in _ops(result.model)  # left as it was
