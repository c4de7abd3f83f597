"""Debugging tools: bisect finds a planted faulty pass and its exact site, explain ranks the
damaged tensor first (same names, through the rewrite log, through QDQ), diff counts exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphopt.cli import main
from graphopt.debug import bisect, chain_tensor_maps, diff, explain, layer_stats, load_tensor_map
from graphopt.debug.sites import CachedProbe, ddmin, localize
from graphopt.passes import Pass, PassResult, option, register_pass
from graphopt.pipeline_spec import PassSpec

WEIGHTED = ("Conv", "Gemm", "MatMul")


@register_pass
class PlantedFault(Pass):
    """Planted bug: every weighted node is a site; the victim's weight is scaled by `scale`,
    the others are rounded through float16 (a harmless lossy rewrite). Honours skip_sites."""

    name = "test-debug-planted"
    summary = "test only: damages one layer's weight"
    lossless = False

    @dataclass
    class Options:
        victim: str = option("", "node whose weight is damaged")
        scale: float = option(3.0, "factor applied to the victim's weight")
        rename: bool = option(False, "give the victim's output a new name (logged in tensor_map)")
        honour_skip: bool = option(True, "respect ctx.skip_sites")

    def run(self, model, ctx):
        inits = {t.name: t for t in model.graph.initializer}
        sites, tensor_map = [], {}
        for node in model.graph.node:
            if node.op_type not in WEIGHTED or node.input[1] not in inits:
                continue
            if self.options.honour_skip and node.name in ctx.skip_sites:
                continue
            weight = numpy_helper.to_array(inits[node.input[1]])
            if node.name == self.options.victim:
                weight = weight * np.float32(self.options.scale)
                if self.options.rename:
                    tensor_map.update(_rename_output(model.graph, node))
            else:
                weight = weight.astype(np.float16).astype(np.float32)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), node.input[1]))
            sites.append(node.name)
        return PassResult(model, bool(sites), {"rewritten": len(sites)}, sites=sites, tensor_map=tensor_map)


def _rename_output(graph, node) -> dict[str, str]:
    old, new = node.output[0], node.output[0] + "_damaged"
    node.output[0] = new
    for other in graph.node:
        for i, name in enumerate(other.input):
            if name == old:
                other.input[i] = new
    return {new: old}


@register_pass
class FakeQuant(Pass):
    """Wraps one tensor in QuantizeLinear -> DequantizeLinear with a scale far too coarse."""

    name = "test-debug-fakequant"
    summary = "test only: badly quantizes one activation"
    lossless = False

    @dataclass
    class Options:
        tensor: str = option("", "activation to wrap")
        scale: float = option(0.5, "quantization step")

    def run(self, model, ctx):
        graph, name = model.graph, self.options.tensor
        if name in ctx.skip_sites:
            return PassResult(model, False)
        q, dq = name + "_q", name + "_dq"
        graph.initializer.append(numpy_helper.from_array(np.array(self.options.scale, np.float32), name + "_s"))
        graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), name + "_zp"))
        for node in graph.node:
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = dq
        index = next(i for i, n in enumerate(graph.node) if name in n.output) + 1
        graph.node.insert(index, helper.make_node("DequantizeLinear", [q, name + "_s", name + "_zp"], [dq], name=dq))
        graph.node.insert(index, helper.make_node("QuantizeLinear", [name, name + "_s", name + "_zp"], [q], name=q))
        return PassResult(model, True, {"wrapped": 1}, sites=[name])


@register_pass
class WrongLossless(Pass):
    """A compiler bug: negates the victim's weight while claiming to be lossless."""

    name = "test-debug-wrong-lossless"
    summary = "test only"
    lossless = True

    @dataclass
    class Options:
        victim: str = option("", "node whose weight is negated")

    def run(self, model, ctx):
        inits = {t.name: t for t in model.graph.initializer}
        sites = []
        for node in model.graph.node:
            if node.op_type in WEIGHTED and node.input[1] in inits and node.name not in ctx.skip_sites:
                if node.name == self.options.victim:
                    weight = -numpy_helper.to_array(inits[node.input[1]])
                    inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
                sites.append(node.name)
        return PassResult(model, bool(sites), sites=sites)


@pytest.fixture(scope="module")
def cnn(digits_cnn_path):
    return str(digits_cnn_path)


@pytest.fixture(scope="module")
def data(digits_test_path):
    return str(digits_test_path)


@pytest.fixture(scope="module")
def transformer():
    from models import zoo

    return str(zoo.digits_transformer())


# ------------------------------------------------------------------ bisect
def test_bisect_names_planted_pass_and_exact_site_cnn(cnn, data):
    result = bisect(cnn, "cleanup,test-debug-planted{victim=/conv2/Conv},cleanup", inputs=data)
    assert result["passed"] is False
    assert [s["name"] for s in result["steps"]] == ["cleanup", "test-debug-planted"]  # stops at the culprit
    assert result["steps"][0]["passed"] and not result["steps"][1]["passed"]
    culprit = result["culprit"]
    assert (culprit["name"], culprit["step"], culprit["reason"]) == ("test-debug-planted", 2, "thresholds")
    assert culprit["sites_total"] == 4
    assert culprit["localized"] and culprit["sites"] == ["/conv2/Conv"]
    assert culprit["causes"] == [["/conv2/Conv"]]
    impact = culprit["site_impact"]
    assert impact[0]["site"] == "/conv2/Conv" and impact[0]["failed"]
    assert all(not row["failed"] and row["cosine"] > 0.9999 for row in impact[1:])
    assert result["explain"]["ranking"][0]["tensor"] == "/conv2/Conv_output_0"
    assert result["explain"]["first_divergence"]["tensor"] == "/conv2/Conv_output_0"
    assert result["samples"] == 64


def test_bisect_transformer_names_pass_site_and_tensor(transformer, data):
    victim = "/layers.1/ff1/MatMul"
    result = bisect(transformer, f"cleanup,test-debug-planted{{victim={victim},scale=-1}}", inputs=data)
    culprit = result["culprit"]
    assert culprit["name"] == "test-debug-planted" and culprit["step"] == 2
    assert culprit["sites_total"] == 14 and culprit["sites"] == [victim]
    assert culprit["reruns"] <= 2 * 4 + 2 + 14  # ddmin ~2 log2(14) + checks + per-site impact
    assert result["explain"]["ranking"][0]["tensor"] == "/layers.1/ff1/MatMul_output_0"


def test_bisect_clean_pipeline_passes(cnn, data):
    result = bisect(cnn, "cleanup,test-debug-planted{victim=none}", inputs=data)
    assert result["passed"] and result["culprit"] is None
    assert [s["passed"] for s in result["steps"]] == [True, True]
    assert result["steps"][1]["sites"] == 4


def test_bisect_threshold_arguments_decide(cnn, data):
    spec = "test-debug-planted{victim=/conv2/Conv,scale=1.02}"
    assert bisect(cnn, spec, inputs=data)["passed"]  # 2 % on one layer keeps cosine > 0.99
    strict = bisect(cnn, spec, inputs=data, thresholds={"min_snr_db": 60})
    assert strict["culprit"]["sites"] == ["/conv2/Conv"]


def test_bisect_pass_ignoring_skip_sites_is_not_localized(cnn, data):
    result = bisect(cnn, [PassSpec("test-debug-planted", {"victim": "/conv3/Conv", "honour_skip": False})],
                    inputs=data)
    culprit = result["culprit"]
    assert culprit["name"] == "test-debug-planted" and culprit["localized"] is False
    assert "skip_sites" in culprit["note"]


def test_bisect_lossless_compiler_bug_is_culprit_with_site(cnn, data):
    result = bisect(cnn, "cleanup,test-debug-wrong-lossless{victim=/fc/Gemm}", inputs=data)
    culprit = result["culprit"]
    assert culprit["reason"] == "error" and "lossless" in culprit["error"]
    assert culprit["sites"] == ["/fc/Gemm"]


def test_ddmin_finds_single_and_joint_culprits():
    items = [f"s{i}" for i in range(16)]
    calls = []

    def single(subset):
        calls.append(1)
        return "s9" in subset

    assert ddmin(items, single) == ["s9"]
    assert len(calls) <= 2 * 4 + 2
    assert ddmin(items, lambda subset: {"s3", "s11"} <= set(subset)) == ["s3", "s11"]


@pytest.mark.parametrize("fails, sites, causes", [
    (lambda a: "s2" in a or "s5" in a, ["s2", "s5"], [["s2"], ["s5"]]),  # two independent bad sites
    (lambda a: {"s1", "s6"} <= a, ["s6"], [["s1", "s6"]]),  # only together: reverting one is enough
])
def test_localize_revert_set_and_causes(fails, sites, causes):
    probe = CachedProbe(lambda applied: {"failed": fails(applied), "cosine": 0.5 if fails(applied) else 1.0}, 64)
    found = localize([f"s{i}" for i in range(8)], probe)
    assert (found["sites"], found["causes"]) == (sites, causes)
    assert [row["site"] for row in found["site_impact"] if row["failed"]] == [s for s in ("s2", "s5") if fails({s})]


def test_localize_budget_and_no_sites():
    assert localize([], CachedProbe(lambda a: {"failed": True}, 4))["localized"] is False
    found = localize([f"s{i}" for i in range(64)], CachedProbe(lambda a: {"failed": "s7" in a}, 3))
    assert found["localized"] is False and "budget" in found["note"]


def test_bisect_real_quantize_localizes_sites(cnn, data, digits_calib_path):
    """A threshold just above what the real pipeline reaches: the quantize pass is named,
    and reverting the sites it reports is what the probe found to pass."""
    import graphopt

    spec, calib = "cleanup,fuse,quantize", str(digits_calib_path)
    reached = graphopt.optimize(cnn, passes=spec, inputs=data, calibration_data=calib).report["verification"]
    result = bisect(cnn, spec, inputs=data, calibration_data=calib, thresholds={"min_snr_db": reached["snr_db"] + 1})
    culprit = result["culprit"]
    assert culprit["name"] == "quantize" and [s["passed"] for s in result["steps"]] == [True, True, False]
    assert culprit["localized"] and culprit["sites"]
    assert set(culprit["sites"]) <= {row["site"] for row in culprit["site_impact"]}


# ------------------------------------------------------------------ explain
def _optimized(path, spec, data):
    import graphopt

    return graphopt.optimize(path, passes=spec, inputs=data, thresholds={"min_cosine": -1.0})


def test_explain_ranks_damaged_tensor_first_same_names(cnn, data):
    result = _optimized(cnn, "test-debug-planted{victim=/conv3/Conv,scale=0.2}", data)
    found = explain(cnn, result.model, inputs=data, top=3)
    assert found["ranking"][0]["tensor"] == "/conv3/Conv_output_0"
    assert found["ranking"][0]["introduced_db"] > 30
    assert found["tensors_compared"] == 13 and found["candidate_tensors_unmatched"] == 0
    depth = [row["index"] for row in found["layers"]]
    assert depth == sorted(depth)
    upstream = [row for row in found["layers"] if row["index"] < found["ranking"][0]["index"]]
    assert upstream and all(row["snr_db"] > 60 for row in upstream)


def test_explain_follows_rewrite_log(cnn, data, tmp_path):
    result = _optimized(cnn, "cleanup,test-debug-planted{victim=/conv2/Conv,rename=true}", data)
    renamed = "/conv2/Conv_output_0_damaged"
    assert result.report["passes"][1]["tensor_map"] == {renamed: "/conv2/Conv_output_0"}
    without = explain(cnn, result.model, inputs=data)
    assert all(row["tensor"] != "/conv2/Conv_output_0" for row in without["layers"])
    report_path = tmp_path / "report.json"
    report_path.write_text(json.dumps(result.report, default=str))
    found = explain(cnn, result.model, inputs=data, tensor_map=str(report_path))
    top = found["ranking"][0]
    assert (top["tensor"], top["candidate"], top["via"]) == ("/conv2/Conv_output_0", renamed, "rewrite-log")


def test_explain_reads_dump_dir_tensor_maps(cnn, data, tmp_path):
    import graphopt

    dump = tmp_path / "dump"
    result = graphopt.optimize(cnn, passes="test-debug-planted{victim=/conv1/Conv,rename=true}", inputs=data,
                               thresholds={"min_cosine": -1.0}, dump_dir=dump)
    found = explain(cnn, result.model, inputs=data, tensor_map=str(dump))
    assert found["ranking"][0]["tensor"] == "/conv1/Conv_output_0"
    assert found["ranking"][0]["via"] == "rewrite-log"
    step = explain(dump / "00-input.onnx", dump / "01-test-debug-planted.onnx", inputs=data, tensor_map=str(dump))
    assert step["ranking"][0]["via"] == "rewrite-log"
    assert load_tensor_map(str(dump), 0) == {} and load_tensor_map(str(dump), 1) == load_tensor_map(str(dump))


def test_explain_maps_qdq_to_float_original(cnn, data):
    tensor = "/Relu_1_output_0"
    result = _optimized(cnn, f"test-debug-fakequant{{tensor={tensor},scale=0.5}}", data)
    found = explain(cnn, result.model, inputs=data)
    top = found["ranking"][0]
    assert (top["tensor"], top["candidate"], top["via"]) == (tensor, tensor + "_dq", "qdq")
    direct = next(r for r in found["layers"] if r["candidate"] == tensor)
    assert direct["snr_db"] == 140.0  # the float tensor itself is untouched


def test_explain_transformer_ranks_damaged_tensor_first(transformer, data):
    result = _optimized(transformer, "cleanup,test-debug-planted{victim=/layers.0/attn/v/MatMul,scale=4}", data)
    found = explain(transformer, result.model, inputs=data, tensor_map=result.report, top=5)
    assert found["ranking"][0]["tensor"] == "/layers.0/attn/v/MatMul_output_0"


def test_explain_identical_models_no_divergence(cnn, data):
    found = explain(cnn, cnn, inputs=data)
    assert found["first_divergence"] is None
    assert {row["snr_db"] for row in found["layers"]} == {140.0}


def test_chain_tensor_maps_composes_passes():
    records = [{"tensor_map": {"b": "a"}}, {"tensor_map": {}}, {"tensor_map": {"c": "b", "x": "y"}}]
    assert chain_tensor_maps(records) == {"b": "a", "c": "a", "x": "y"}


# ------------------------------------------------------------------ diff and layer stats
def _edited_cnn(path):
    model = onnx.load(path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weight = numpy_helper.to_array(inits["conv1.weight"]).copy()
    weight[0, 0, 0, 0] += 0.5
    inits["conv1.weight"].CopyFrom(numpy_helper.from_array(weight, "conv1.weight"))
    graph.initializer.remove(inits["fc.bias"])
    graph.initializer.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias2"))
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    gemm.input[2] = "fc.bias2"
    relu = next(n for n in graph.node if n.name == "/Relu")  # bypass the first Relu
    nxt = next(n for n in graph.node if relu.output[0] in n.input)
    nxt.input[list(nxt.input).index(relu.output[0])] = relu.input[0]
    graph.node.remove(relu)
    pool = next(n for n in graph.node if n.op_type == "MaxPool")
    for attr in pool.attribute:
        if attr.name == "kernel_shape":
            attr.CopyFrom(helper.make_attribute("kernel_shape", [3, 3]))
    flat = next(n for n in graph.node if n.op_type == "Flatten")
    ident = helper.make_node("Identity", [flat.input[0]], ["pooled_copy"], name="/copy")
    flat.input[0] = "pooled_copy"
    graph.node.insert(list(graph.node).index(flat), ident)
    return model, float(weight[0, 0, 0, 0] - 0.5), weight


def test_diff_exact_counts(cnn):
    edited, _, _ = _edited_cnn(cnn)
    result = diff(cnn, edited)
    assert result["op_types"]["changed"] == {"Identity": {"a": 0, "b": 1, "delta": 1},
                                             "Relu": {"a": 3, "b": 2, "delta": -1}}
    assert result["op_types"]["added"] == {"Identity": 1} and result["op_types"]["removed"] == {"Relu": 1}
    assert result["nodes"]["added"] == [{"name": "/copy", "op_type": "Identity"}]
    assert result["nodes"]["removed"] == [{"name": "/Relu", "op_type": "Relu"}]
    changed = {row["name"]: row["changes"] for row in result["nodes"]["changed"]}
    assert set(changed) == {"/conv2/Conv", "/pool/MaxPool", "/Flatten", "/fc/Gemm"}
    assert changed["/pool/MaxPool"] == [f"attribute kernel_shape: {_kernel(cnn)} -> [3, 3]"]
    inits = result["initializers"]
    assert [t["name"] for t in inits["added"]] == ["fc.bias2"]
    assert [t["name"] for t in inits["removed"]] == ["fc.bias"]
    (row,) = inits["changed"]
    assert row["name"] == "conv1.weight" and row["elements_changed"] == 1
    assert row["max_abs_error"] == pytest.approx(0.5, abs=1e-6)
    original = numpy_helper.to_array(next(t for t in onnx.load(cnn).graph.initializer if t.name == "conv1.weight"))
    assert row["relative_error"] == pytest.approx(0.5 / np.abs(original).max(), rel=1e-5)
    assert result["params"]["delta"] == 0 and not result["identical"]
    assert diff(cnn, cnn)["identical"]


def _kernel(path):
    pool = next(n for n in onnx.load(path).graph.node if n.op_type == "MaxPool")
    return next(list(a.ints) for a in pool.attribute if a.name == "kernel_shape")


def test_layer_stats_zero_fractions(cnn):
    model = onnx.load(cnn)
    init = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    weight = numpy_helper.to_array(init).copy()
    weight[:4] = 0  # 4 of 16 output channels
    weight[4, :, 0, 0] = 0  # 16 of 144 weights of channel 4
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    rows = {row["node"]: row for row in layer_stats(model, bins=16)}
    assert set(rows) == {"/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/fc/Gemm"}
    conv2 = rows["/conv2/Conv"]
    assert conv2["zero_fraction"] == pytest.approx((4 * 144 + 16) / weight.size)
    assert conv2["channel_zero_fraction"][:5] == [1.0, 1.0, 1.0, 1.0, round(16 / 144, 4)]
    assert rows["/conv1/Conv"]["zero_fraction"] == 0.0


# ------------------------------------------------------------------ CLI
def test_cli_bisect_exit_codes(cnn, data, capsys):
    code = main(["bisect", cnn, "--passes", "cleanup,test-debug-planted{victim=/conv2/Conv}", "--inputs", data])
    out = capsys.readouterr().out
    assert code == 2
    assert "first failing pass: test-debug-planted (step 2)" in out
    assert "responsible site(s), reverting these passes: /conv2/Conv" in out and "/conv2/Conv_output_0" in out
    assert main(["bisect", cnn, "--passes", "cleanup", "--inputs", data]) == 0
    assert "no pass breaks" in capsys.readouterr().out
    code = main(["bisect", cnn, "--passes", "test-debug-planted{victim=/conv2/Conv,scale=1.02}", "--inputs", data,
                 "--min-snr-db", "60", "--json"])
    assert code == 2 and json.loads(capsys.readouterr().out)["culprit"]["sites"] == ["/conv2/Conv"]


def test_cli_bisect_html_report(cnn, data, tmp_path, capsys):
    report = tmp_path / "bisect.html"
    code = main(["bisect", cnn, "--passes", "test-debug-planted{victim=/conv3/Conv}", "--inputs", data,
                 "--report", str(report)])
    html = report.read_text()
    assert code == 2 and "<h2>Bisect</h2>" in html and "<h2>Error along depth</h2>" in html
    assert "First failing pass: test-debug-planted" in html and html.count("<svg") == 3
    assert main(["bisect", cnn, "--passes", "cleanup", "--report", str(tmp_path / "r.md")]) == 1
    capsys.readouterr()


def test_cli_bad_input_exit_1(cnn, tmp_path, capsys):
    assert main(["bisect", str(tmp_path / "missing.onnx"), "--passes", "cleanup"]) == 1
    assert main(["bisect", cnn, "--passes", "no-such-pass"]) == 1
    assert main(["explain", cnn, str(tmp_path / "missing.onnx")]) == 1
    assert main(["explain", cnn, cnn, "--report", str(tmp_path / "nope.json")]) == 1
    assert main(["diff", cnn]) == 1
    assert capsys.readouterr().err.count("graphopt: error:") == 5


def test_cli_explain_and_diff(cnn, data, tmp_path, capsys):
    result = _optimized(cnn, "test-debug-planted{victim=/conv3/Conv,scale=0.2}", data)
    cand = tmp_path / "cand.onnx"
    result.save(cand)
    assert main(["explain", cnn, str(cand), "--inputs", data, "--top", "2"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip().startswith("1 ")]
    assert lines and "/conv3/Conv_output_0" in lines[0]
    assert main(["diff", cnn, str(cand), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert len(parsed["initializers"]["changed"]) == 4 and parsed["op_types"]["changed"] == {}
    assert main(["diff", cnn, cnn]) == 0
    assert "identical" in capsys.readouterr().out


def test_explain_matches_onnxruntime_qdq_loss_debug(cnn, data, digits_calib_path, tmp_path):
    """On an onnxruntime-quantized QDQ model (its naming: the DQ output takes the float
    tensor's name, the graph input is quantized too) every activation is matched and the
    SNR equals onnxruntime's own qdq_loss_debug xmodel_err."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_static,
    )
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, x):
            self.items = iter([{"input": x[i:i + 16]} for i in range(0, len(x), 16)])

        def get_next(self):
            return next(self.items, None)

    calib = np.load(digits_calib_path)["input"][:64]
    x = np.load(data)["input"][:64]
    qdq = tmp_path / "qdq.onnx"
    quantize_static(cnn, str(qdq), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True)
    found = explain(cnn, str(qdq), inputs=[{"input": x}])
    ours = {row["tensor"]: row["snr_db"] for row in found["layers"] if row["via"] == "qdq"}
    assert {"input", "logits", "/Relu_output_0"} <= set(ours)
    modify_model_output_intermediate_tensors(cnn, str(tmp_path / "f.onnx"))
    modify_model_output_intermediate_tensors(str(qdq), str(tmp_path / "q.onnx"))
    match = create_activation_matching(collect_activations(str(tmp_path / "q.onnx"), Reader(x)),
                                       collect_activations(str(tmp_path / "f.onnx"), Reader(x)))
    theirs = {k: v["xmodel_err"] for k, v in compute_activation_error(match).items() if "xmodel_err" in v}
    assert set(theirs) == set(ours)
    for name, snr in theirs.items():
        assert ours[name] == pytest.approx(snr, abs=1e-3), name


def test_explain_real_quantize_relu_folded_name(cnn, data, digits_calib_path):
    """The quantize pass folds the residual Relu into uint8 QDQ and gives its output name to
    the Add: that tensor holds the Add's value and is compared with the Add's output."""
    import graphopt

    result = graphopt.optimize(cnn, passes="cleanup,fuse,quantize", inputs=data,
                               calibration_data=str(digits_calib_path))
    found = explain(cnn, result.model, inputs=data, tensor_map=result.report)
    producer = {o: n.op_type for n in result.model.graph.node for o in n.output}
    rows = {row["candidate"]: row for row in found["layers"]}
    if producer.get("/Relu_2_output_0") == "Add":
        assert rows["/Relu_2_output_0"]["tensor"] == "/Add_output_0"
    assert all(row["snr_db"] > 25 for row in found["layers"])  # no tensor compared with the wrong one
    assert {row["via"] for row in found["layers"]} >= {"name", "qdq"}


def test_localize_keeps_result_when_budget_ends_during_impact():
    runs = CachedProbe(lambda a: {"failed": "s1" in a, "cosine": 0.5 if "s1" in a else 1.0}, 9)
    found = localize([f"s{i}" for i in range(8)], runs)
    assert found["localized"] and found["sites"] == ["s1"]
    assert 0 < len(found["site_impact"]) < 8 and runs.runs == 9
