"""Cost models: exact MAC/byte counts, arena peaks, QDQ accounting, sparsity, fit, TOML, CLI."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphopt.errors import InputError
from graphopt.targets import builtin_targets, estimate_cost, load_target, matmul_latency_ms
from tests.conftest import make_model, tensor

F = TensorProto.FLOAT


def rows(model, target="cpu", **kw):
    cost = estimate_cost(model, target, per_node=True, **kw)
    return cost, {r["op_type"] if sum(1 for x in cost["nodes"] if x["op_type"] == r["op_type"]) == 1
                  else r["name"]: r for r in cost["nodes"]}


def runs_in_ort(model):
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# --- MAC and byte counts against hand-computed values ------------------------------------

@pytest.mark.parametrize("group,w_shape,x_shape,macs", [
    (1, [4, 3, 3, 3], [1, 3, 8, 8], 4 * 8 * 8 * 3 * 9),        # pads 1: Y [1,4,8,8]
    (4, [8, 2, 3, 3], [1, 8, 8, 8], 8 * 8 * 8 * 2 * 9),        # grouped: C/g = 2
    (8, [8, 1, 3, 3], [1, 8, 8, 8], 8 * 8 * 8 * 1 * 9),        # depthwise
])
def test_conv_macs_and_bytes(group, w_shape, x_shape, macs):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, pads=[1, 1, 1, 1])
    y_shape = [1, w_shape[0], 8, 8]
    model = make_model([node], [tensor("x", x_shape)], [tensor("y", y_shape)],
                       {"w": np.ones(w_shape, np.float32), "b": np.zeros(w_shape[0], np.float32)})
    cost, by = rows(model)
    conv = by["Conv"]
    assert cost["macs"] == conv["macs"] == macs
    assert cost["flops"] == 2 * macs + int(np.prod(y_shape))          # + bias add
    x_bytes, y_bytes = 4 * np.prod(x_shape), 4 * np.prod(y_shape)
    w_bytes = 4 * (np.prod(w_shape) + w_shape[0])
    assert conv["bytes"] == x_bytes + y_bytes + w_bytes
    assert cost["params"] == np.prod(w_shape) + w_shape[0]
    assert cost["weight_bytes"] == w_bytes
    assert conv["dtype"] == "fp32" and conv["bound"] in ("compute", "memory")


def test_conv_transpose_macs():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    model = make_model([node], [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 2, 11, 11])],
                       {"w": np.ones([4, 2, 3, 3], np.float32)})
    assert estimate_cost(model, "cpu")["macs"] == 4 * 5 * 5 * 2 * 3 * 3


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_macs(trans_a):
    a_shape = [16, 2] if trans_a else [2, 16]
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a)
    model = make_model([node], [tensor("a", a_shape)], [tensor("y", [2, 8])],
                       {"b": np.ones([16, 8], np.float32), "c": np.ones([8], np.float32)})
    cost = estimate_cost(model, "cpu")
    assert cost["macs"] == 2 * 16 * 8
    assert cost["flops"] == 2 * 2 * 16 * 8 + 2 * 8


def test_batched_matmul_macs_with_broadcast():
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = make_model([node], [tensor("a", [2, 3, 4, 5]), tensor("b", [5, 6])], [tensor("y", [2, 3, 4, 6])])
    cost, by = rows(model)
    assert cost["macs"] == 2 * 3 * 4 * 6 * 5
    assert by["MatMul"]["bytes"] == 4 * (120 + 30 + 144)
    assert by["MatMul"]["intensity"] == pytest.approx(2 * 720 / (4 * 294))


def test_pool_elementwise_norm_and_views():
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Softmax", ["p"], ["s"], axis=-1),
             helper.make_node("Add", ["s", "s"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 2, 4, 4])], [tensor("y", [1, 8])],
                       {"shape": np.array([1, 8], np.int64)})
    cost, by = rows(model)
    assert by["MaxPool"]["flops"] == 8 * 4                 # 8 outputs x 4 taps
    assert by["Softmax"]["flops"] == 5 * 8
    assert by["Add"]["flops"] == 8 and by["Add"]["bytes"] == 4 * (8 + 8 + 8)
    assert by["Reshape"]["bytes"] == 0                     # a view moves nothing
    assert cost["macs"] == 0


def test_norms_resize_global_pool_flops():
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"]),
             helper.make_node("Resize", ["n", "", "scales"], ["r"], mode="linear"),
             helper.make_node("LayerNormalization", ["r", "g", "bb"], ["l"], axis=-1),
             helper.make_node("GlobalAveragePool", ["l"], ["y"])]
    c = np.ones(2, np.float32)
    model = make_model(nodes, [tensor("x", [1, 2, 4, 4])], [tensor("y", [1, 2, 1, 1])],
                       {"s": c, "b": c, "m": c, "v": c, "scales": np.array([1, 1, 2, 2], np.float32),
                        "g": np.ones(8, np.float32), "bb": np.ones(8, np.float32)})
    _, by = rows(model)
    assert by["BatchNormalization"]["flops"] == 2 * 32
    assert by["Resize"]["flops"] == 2 * 4 * 128          # bilinear: 4 taps x (mul + add) per output
    assert by["LayerNormalization"]["flops"] == 8 * 128
    assert by["GlobalAveragePool"]["flops"] == 128


def test_lstm_einsum_attention_macs():
    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["", "h"], hidden_size=8)
    model = make_model([lstm], [tensor("x", [5, 1, 4])], [tensor("h", [1, 1, 8])],
                       {"w": np.ones([1, 32, 4], np.float32), "r": np.ones([1, 32, 8], np.float32)})
    assert estimate_cost(model, "cpu")["macs"] == 5 * 1 * (32 * 4 + 32 * 8)
    ein = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")
    model = make_model([ein], [tensor("a", [2, 3, 4]), tensor("b", [2, 4, 5])], [tensor("y", [2, 3, 5])])
    assert estimate_cost(model, "cpu")["macs"] == 2 * 3 * 4 * 5
    att = helper.make_node("Attention", ["q", "k", "v"], ["y"])
    model = make_model([att], [tensor("q", [1, 2, 4, 8]), tensor("k", [1, 2, 6, 8]), tensor("v", [1, 2, 6, 8])],
                       [tensor("y", [1, 2, 4, 8])], opset=23, ir_version=11)
    assert estimate_cost(model, "cpu")["macs"] == 2 * (1 * 2 * 4 * 8) * 6   # QK^T and PV


def test_int4_weight_only_matmul_reads_half_bytes():
    nodes = [helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=0, block_size=0),
             helper.make_node("MatMul", ["x", "wd"], ["y"])]
    wq = helper.make_tensor("wq", TensorProto.INT4, [16, 8], np.ones(128, np.int8).tolist())
    graph = helper.make_graph(nodes, "g", [tensor("x", [1, 16])], [tensor("y", [1, 8])],
                              [wq, helper.make_tensor("sw", F, [], [0.1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    cost, by = rows(model)
    assert cost["weight_bytes"] == 64 + 4
    assert by["MatMul"]["dtype"] == "fp32" and by["MatMul"]["bytes"] == 64 + 4 * (16 + 8)


def test_unknown_op_counts_bytes_and_is_listed():
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="example.custom")
    graph = helper.make_graph([node], "g", [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    graph.value_info.append(tensor("y", [1, 4]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.custom", 1)], ir_version=8)
    cost = estimate_cost(model, "cpu", per_node=True)
    assert cost["unknown_ops"] == {"Frobnicate": 1}
    assert cost["nodes"][0]["bytes"] == 32
    assert cost["unsupported_ops"]["Frobnicate"]["action"] == "cannot run"   # foreign domain


# --- activation arena -----------------------------------------------------------------------

def test_arena_chain_exact_peak_with_inplace():
    # x(64 B, caller-owned) -Relu-> r(64) -Sigmoid in place-> s -MatMul w-> y(32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["s"]),
             helper.make_node("MatMul", ["s", "w"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 16])], [tensor("y", [1, 8])], {"w": np.ones([16, 8], np.float32)})
    cost = estimate_cost(model, "cpu")
    assert cost["peak_activation_bytes"] == 64 + 64      # Relu: x and r live together
    assert cost["arena_bytes"] == 128
    assert cost["memory_plan"]["inplace_tensors"] == 1   # s reuses r


def test_arena_residual_exact_peak():
    nodes = [helper.make_node("Mul", ["x", "c"], ["a"]),       # a: 64 B, read again by Concat
             helper.make_node("Relu", ["a"], ["b"]),           # not in place: a still needed
             helper.make_node("Tanh", ["b"], ["t"]),           # in place into b
             helper.make_node("Concat", ["a", "t"], ["y"], axis=1)]
    model = make_model(nodes, [tensor("x", [1, 16])], [tensor("y", [1, 32])], {"c": np.float32(2.0)})
    cost = estimate_cost(model, "cpu")
    assert cost["peak_activation_bytes"] == 64 + 64 + 128    # a, t and y during Concat


def _two_branch_model():
    # Given order runs both MatMuls before either reduction: x, m1, m2 live (3 KiB).
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("MatMul", ["x", "w2"], ["m2"]),
             helper.make_node("ReduceSum", ["m1"], ["s1"], keepdims=1),
             helper.make_node("ReduceSum", ["m2"], ["s2"], keepdims=1),
             helper.make_node("Add", ["s1", "s2"], ["y"])]
    w = np.ones([256, 256], np.float32)
    return make_model(nodes, [tensor("x", [1, 256])], [tensor("y", [1, 1])], {"w1": w, "w2": w})


def test_optimize_order_lowers_peak():
    model = _two_branch_model()
    given = estimate_cost(model, "mcu")
    better = estimate_cost(model, "mcu", optimize_order=True)
    assert given["peak_activation_bytes"] == 3 * 1024
    assert better["peak_activation_bytes"] == 2 * 1024 + 4    # x + s1 + m2
    assert "reordered" in better["memory_plan"]["order"]


# --- quantized (QDQ) accounting -------------------------------------------------------------

def _qdq_conv_model():
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    inits = {"sx": np.float32(0.1), "zx": np.uint8(128), "sw": np.float32(0.05), "zw": np.int8(0),
             "wq": np.ones([4, 3, 3, 3], np.int8), "b": np.zeros(4, np.float32),
             "sy": np.float32(0.2), "zy": np.uint8(128)}
    return make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])], inits)


def test_qdq_conv_counts_as_int8():
    model = _qdq_conv_model()
    runs_in_ort(model)
    cost, by = rows(model)
    conv = by["Conv"]
    assert conv["dtype"] == "int8" and conv["macs"] == 4 * 64 * 27
    # int8 input 192 B + int8 weight 108 B + fp32 bias 16 B + int8 output 256 B
    assert conv["bytes"] == 192 + 108 + 16 + 256
    assert {r["name"] for r in cost["nodes"] if r["fused"]} == {"xd", "wd", "yq"}
    assert sum(1 for r in cost["nodes"] if r["op_type"] in ("QuantizeLinear", "DequantizeLinear")
               and not r["fused"]) == 2                            # model-edge Q and DQ remain
    # weights: int8 108 + bias 16 + 3 fp32 scales 12 + 3 uint8/1 int8 zero points 3
    assert cost["weight_bytes"] == 108 + 16 + 12 + 3
    # arena: Q x(256)+xq(192); Conv xq(192)+yq(256, int8); DQ yq(256)+y(1024, fp32)
    assert cost["peak_activation_bytes"] == 256 + 1024


def test_int8_is_cheaper_than_fp32_on_mcu_and_npu_runs_it():
    qdq = estimate_cost(_qdq_conv_model(), "npu")
    assert "Conv" not in qdq["unsupported_ops"]
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    fp = make_model([node], [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 4, 8, 8])],
                    {"w": np.ones([4, 3, 3, 3], np.float32)})
    fp_npu = estimate_cost(fp, "npu")
    assert fp_npu["unsupported_ops"]["Conv"]["action"].startswith("fallback")
    assert fp_npu["fits"]          # falls back, still runs


def test_quantized_digits_cnn_fits_mcu(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from models import zoo

    data = zoo.digits_data("calib")["input"][:8]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": data[i:i + 1]} for i in range(len(data)))

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / "q.onnx"
    quantize_static(str(zoo.digits_cnn()), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    model = onnx.load(str(out))
    cost = estimate_cost(model, "mcu", per_node=True)
    expected = sum(np.prod(t.dims) * {TensorProto.INT8: 1, TensorProto.UINT8: 1}.get(t.data_type, 4)
                   for t in model.graph.initializer)
    assert cost["weight_bytes"] == expected
    assert cost["fits"], cost["fit"]["messages"]
    assert all(r["dtype"] == "int8" for r in cost["nodes"] if r["op_type"] == "Conv")
    flash = next(lvl for lvl in cost["fit"]["levels"] if lvl["kind"] == "weights")
    assert flash["level"] == "flash" and flash["capacity_bytes"] == 256 * 1024


# --- sparsity, fit, targets ---------------------------------------------------------------

def _fp16_matmul(annotate: bool):
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = make_model([node], [tensor("x", [2048, 2048], TensorProto.FLOAT16)],
                       [tensor("y", [2048, 2048], TensorProto.FLOAT16)], {"w": np.zeros([2048, 2048], np.float16)})
    if annotate:
        meta = {"pattern": "2:4", "n": 2, "m": 4, "tensors": {"w": {"axis": 0}}}
        helper.set_model_props(model, {"graphopt.sparsity": json.dumps(meta)})
    return model


def test_sparsity_credit_on_gpu_only():
    dense, sparse = _fp16_matmul(False), _fp16_matmul(True)
    gpu_d, gpu_s = estimate_cost(dense, "gpu"), estimate_cost(sparse, "gpu")
    assert gpu_s["latency_ms"] < 0.7 * gpu_d["latency_ms"]   # launch overheads stay
    assert estimate_cost(sparse, "cpu")["latency_ms"] == pytest.approx(estimate_cost(dense, "cpu")["latency_ms"])
    assert matmul_latency_ms("gpu", 4096, 4096, 4096, "fp16", sparse=True) < \
        matmul_latency_ms("gpu", 4096, 4096, 4096, "fp16")
    assert matmul_latency_ms("cpu", 64, 512, 512, "int8", sparse=True) == matmul_latency_ms("cpu", 64, 512, 512, "int8")


def test_resnet18_size_weights_do_not_fit_mcu():
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = make_model([node], [tensor("x", [1, 3072])], [tensor("y", [1, 3808])],
                       {"w": np.zeros([3072, 3808], np.float32)})      # 11.7 M params, 46.8 MB
    cost = estimate_cost(model, "mcu")
    assert not cost["fits"]
    assert any("do not fit flash" in m for m in cost["fit"]["messages"])
    assert estimate_cost(model, "cpu")["fits"]


def test_builtin_targets_and_fields():
    assert builtin_targets() == ["cpu", "gpu", "mcu", "npu"]
    cpu, npu, mcu = load_target("cpu"), load_target("npu"), load_target("mcu")
    assert cpu.contrib_domains == ("com.microsoft",) and npu.contrib_domains == ()
    assert cpu.supports_op("FusedMatMul", "com.microsoft") and not npu.supports_op("FusedMatMul", "com.microsoft")
    assert mcu.supports_dtype("int8") and not mcu.supports_dtype("fp16") and not npu.supports_dtype("fp32")
    assert mcu.default_pipeline == "cleanup,fuse,quantize" and cpu.default_pipeline == "cleanup,fuse"
    assert cpu.sparse_peak_gops == cpu.peak_gops and load_target("gpu").sparse_peak_gops["fp16"] == 2 * load_target("gpu").peak_gops["fp16"]
    assert load_target(cpu) is cpu


def test_user_toml_and_errors(tmp_path):
    from graphopt.targets.schema import DATA_DIR

    text = (DATA_DIR / "mcu.toml").read_text().replace("capacity_bytes = 262144", "capacity_bytes = 1048576")
    good = tmp_path / "m7.toml"
    good.write_text(text.replace('name = "mcu"', 'name = "m7"'))
    target = load_target(str(good))
    assert target.name == "m7" and target.level("weights").capacity_bytes == 1048576
    with pytest.raises(InputError, match="known targets: cpu, gpu, mcu, npu"):
        load_target("tpu")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(InputError, match="invalid TOML") as err:
        load_target(bad)
    assert "\n" not in str(err.value)
    missing = tmp_path / "missing.toml"
    missing.write_text('name = "x"\n')
    with pytest.raises(InputError, match="missing key"):
        load_target(missing)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(text.replace("[peak_gops.dense]\n", "[peak_gops.dense]\nfp8 = 1.0\n"))
    with pytest.raises(InputError, match="unknown dtype 'fp8'"):
        load_target(wrong)
    with pytest.raises(InputError, match="no such file"):
        load_target(tmp_path / "absent.toml")


def test_dynamic_dims_resolve_to_batch_one_or_given_shape():
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = make_model([node], [tensor("x", ["N", 16])], [tensor("y", ["N", 8])], {"w": np.ones([16, 8], np.float32)})
    assert estimate_cost(model, "cpu")["macs"] == 16 * 8
    assert estimate_cost(model, "cpu", input_shapes={"x": [5, 16]})["macs"] == 5 * 16 * 8


# --- CLI --------------------------------------------------------------------------------------

def _cli(argv):
    from graphopt.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def test_cli_table_json_and_errors(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_two_branch_model(), str(path))
    code, out = _cli(["cost", str(path), "--target", "cpu", "--target", "mcu"])
    assert code == 0 and "latency" in out and "cpu" in out.splitlines()[0] and "mcu" in out.splitlines()[0]
    code, out = _cli(["cost", str(path), "--target", "mcu", "--json", "--optimize-order", "--per-node"])
    data = json.loads(out)
    assert code == 0 and data["mcu"]["peak_activation_bytes"] == 2 * 1024 + 4 and len(data["mcu"]["nodes"]) == 5
    code, out = _cli(["cost", str(path), "--per-node"])
    assert "per-node cost on cpu" in out and "ReduceSum" in out
    assert _cli(["cost", str(path), "--target", "tpu"])[0] == 1
    assert _cli(["cost", str(path), "--input-shape", "x=a,b"])[0] == 1


@pytest.mark.parametrize("target", ["cpu", "gpu", "npu", "mcu"])
def test_every_builtin_prices_the_digits_models(target):
    from models import zoo

    for path in (zoo.digits_cnn(), zoo.digits_mlp(), zoo.digits_transformer()):
        cost = estimate_cost(onnx.load(str(path)), target, per_node=True)
        assert cost["latency_ms"] > 0 and cost["energy_mj"] > 0 and cost["macs"] > 0
        assert cost["unknown_ops"] == {} and cost["notes"] == []
        assert sum(r["macs"] for r in cost["nodes"]) == cost["macs"]


def test_quantization_tables_of_builtins_and_validation(tmp_path):
    from graphopt.targets.schema import DATA_DIR

    cpu, gpu = load_target("cpu").quantization, load_target("gpu").quantization
    assert cpu["activation_type"] == "uint8" and cpu["symmetric_activations"] is False
    assert cpu["activation_matmul"] is False and cpu["float_range_limit"] == 1e4
    assert gpu["activation_type"] == "int8" and gpu["symmetric_activations"] is True
    for name in ("npu", "mcu"):
        assert load_target(name).quantization["activation_type"] == "int8"
    text = (DATA_DIR / "cpu.toml").read_text()
    for bad, message in [('activation_type = "uint8"', "activation_type = \"fp8\""),
                         ("activation_matmul = false", "activation_matmul = 1"),
                         ("smooth_alpha = 0.5", "smooth_alpha = 2.0"),
                         ("smooth_alpha = 0.5", "smooth_alpha = 0.5\nbits = 3")]:
        path = tmp_path / "t.toml"
        path.write_text(text.replace(bad, message))
        with pytest.raises(InputError, match="quantization"):
            load_target(path)
    path.write_text(text[:text.index("[quantization]")])
    assert load_target(path).quantization == {}
