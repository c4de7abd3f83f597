"""HTML report: one self-contained file with inline SVG plots; renders with any keys missing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import numpy_helper

import graphopt
from graphopt.debug import explain, layer_stats
from graphopt.passes import Pass, PassResult, register_pass
from graphopt.report import write_report
from graphopt.report.html import quantization_errors, render_html


@register_pass
class _ScaleConv2(Pass):
    """Planted lossy rewrite: triples conv2's weight (one site)."""

    name = "test-html-scale-conv2"
    summary = "test only"
    lossless = False

    def run(self, model, ctx):
        init = next(t for t in model.graph.initializer if t.name == "conv2.weight")
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(3), init.name))
        return PassResult(model, True, {"scaled": 1}, sites=["/conv2/Conv"])

EXTERNAL = re.compile(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not EXTERNAL.search(html)
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    assert html.count("<svg") == html.count("</svg>")


@pytest.fixture(scope="module")
def full_report(digits_cnn_path, digits_test_path):
    cnn, data = str(digits_cnn_path), str(digits_test_path)
    result = graphopt.optimize(cnn, passes="cleanup,test-html-scale-conv2,cleanup",
                               inputs=data, thresholds={"min_cosine": 0.5})
    report = dict(result.report)
    report["explain"] = explain(cnn, result.model, inputs=data, tensor_map=report)
    report["layers"] = layer_stats(result.model)
    report["layers"][1]["channel_zero_fraction"][:3] = [1.0, 0.5, 0.25]
    rng = np.random.default_rng(0)
    report["passes"].append({"name": "quantize", "changed": True, "seconds": 0.1, "nodes_before": 13,
                             "nodes_after": 30, "stats": {
                                 "weight_error": {f"layer{i}": {"snr_db": float(v)} for i, v in
                                                  enumerate(rng.normal(35, 3, 12))},
                                 "activation_error": [{"name": f"act{i}", "snr_db": float(v)} for i, v in
                                                      enumerate(rng.normal(30, 3, 9))]},
                             "verification": {"passed": True, "cosine": 0.999, "snr_db": 31.0}})
    return report


def test_full_report_has_every_plot(full_report):
    html = render_html(full_report)
    _self_contained(html)
    for heading in ("Cost per target", "Passes", "Error along depth", "Weight sparsity per layer",
                    "Quantization error", "Verification"):
        assert f"<h2>{heading}</h2>" in html
    assert html.count("<svg") == 9  # cost, seconds, cosine, SNR per pass, SNR+cosine depth, heat map, 2 hist
    assert "/conv2/Conv_output_0" in html  # the damaged tensor is named in the depth table
    assert "weights: per-layer quantization error" in html and "activations: per-layer" in html


def test_quantization_errors_collects_pass_stats(full_report):
    found = quantization_errors(full_report)
    assert found["weights"][0] == "snr_db" and len(found["weights"][1]) == 12
    assert found["activations"][0] == "snr_db" and len(found["activations"][1]) == 9


@pytest.mark.parametrize("report", [{}, {"passes": []}, {"cost": {"before": {"error": "x"}, "after": {}}},
                                    {"passes": [{"name": "cleanup"}]}, {"explain": {"layers": []}},
                                    {"layers": [{"node": "n"}]}, {"error": "boom <b>", "target": "mcu"},
                                    {"verification": {"passed": False, "failures": ["logits: cosine"]}}])
def test_renders_with_missing_keys(report):
    html = render_html(report)
    _self_contained(html)
    assert "<b>" not in html  # text is escaped


def test_cost_per_target_dict_and_write_report(tmp_path, full_report):
    before = {"macs": 100, "params": 10, "latency_ms": 2.0}
    report = {"target": "cpu", "cost": {"cpu": {"before": before, "after": {"macs": 50, "params": 10, "latency_ms": 1.0}},
                                        "mcu": {"before": before, "after": {"macs": 25, "params": 5, "latency_ms": 0.5}}}}
    html = render_html(report)
    assert html.count("<svg") == 2 and "mcu: after / before" in html
    path = write_report(full_report, tmp_path / "report.html")
    _self_contained(path.read_text())
