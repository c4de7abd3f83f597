"""Pass manager: spec parsing, TOML files, transactional runs, planted faulty passes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from conftest import make_model, tensor
from graphopt.errors import InputError, PassError
from graphopt.instruments import Numerics, WellFormed
from graphopt.passes import Pass, PassContext, PassResult, option, register_pass, registry
from graphopt.pipeline import PassManager
from graphopt.pipeline_spec import load_pipeline_file, parse_inline
from graphopt.verify import synthesize_inputs


def test_inline_syntax_with_options_and_lists():
    specs = parse_inline("fuse,prune-channels{ratio=0.3},quantize{calibration=entropy,exclude=[a,b]}")
    assert [s.name for s in specs] == ["fuse", "prune-channels", "quantize"]
    assert specs[1].options == {"ratio": "0.3"}
    assert specs[2].options == {"calibration": "entropy", "exclude": "[a,b]"}
    assert str(specs[2]) == "quantize{calibration=entropy,exclude=[a,b]}"


@pytest.mark.parametrize("bad", ["fuse,,cleanup", "fuse{ratio", "Fuse", "fuse{x}", "fuse{a=1,a=2}", "fuse}"])
def test_inline_syntax_errors_are_input_errors(bad):
    with pytest.raises(InputError):
        parse_inline(bad)


def test_toml_pipeline(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('target = "mcu"\n[[passes]]\nname = "cleanup"\nfold_constants = false\n'
                    '[verify]\nmin_cosine = 0.95\n')
    config = load_pipeline_file(path)
    assert config.target == "mcu"
    assert config.passes[0].name == "cleanup" and config.passes[0].options == {"fold_constants": False}
    assert config.verify == {"min_cosine": 0.95}
    path.write_text("[[passes]\n")
    with pytest.raises(InputError, match="invalid TOML"):
        load_pipeline_file(path)


def test_unknown_pass_and_option_list_known_names():
    with pytest.raises(InputError, match="known: .*cleanup"):
        PassManager.from_text("no-such-pass").build()
    with pytest.raises(InputError, match="has no option 'bogus'"):
        PassManager.from_text("cleanup{bogus=1}").build()
    with pytest.raises(InputError, match="expected bool"):
        PassManager.from_text("cleanup{fold_constants=maybe}").build()


def _relu_model():
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                      [tensor("x", [2, 3])], [tensor("y", [2, 3])])


@register_pass
class _ScaleOutputs(Pass):
    """Planted bug: claims to be lossless but doubles the output."""

    name = "test-scale-outputs"
    summary = "test only: multiply outputs by a factor"
    lossless = True

    @dataclass
    class Options:
        factor: float = option(2.0, "factor")

    def run(self, model, ctx):
        graph = model.graph
        out = graph.output[0].name
        graph.node[-1].output[0] = out + "_pre"
        graph.initializer.append(numpy_helper.from_array(np.array(self.options.factor, np.float32), "k"))
        graph.node.append(helper.make_node("Mul", [out + "_pre", "k"], [out], name="scale"))
        return PassResult(model, True, {"scaled": 1})


@register_pass
class _BreakGraph(Pass):
    name = "test-break-graph"
    summary = "test only: emit a dangling input"
    lossless = True

    def run(self, model, ctx):
        model.graph.node[0].input[0] = "missing"
        return PassResult(model, True)


def _manager(spec, model, **kwargs):
    feeds = synthesize_inputs(model, 2)
    return PassManager.from_text(spec, instruments=[WellFormed(set()), Numerics(feeds)], **kwargs)


def test_lossless_pass_that_changes_numerics_stops_naming_it():
    model = _relu_model()
    report = {}
    with pytest.raises(PassError) as info:
        _manager("cleanup,test-scale-outputs", model).run(model, PassContext(), report)
    assert "test-scale-outputs" in str(info.value) and "after cleanup" in str(info.value)
    assert info.value.pass_name == "test-scale-outputs"
    assert report["passes"][-1]["failed"]


def test_factor_one_is_accepted_as_lossless():
    model = _relu_model()
    report = {}
    out = _manager("test-scale-outputs{factor=1}", model).run(model, PassContext(), report)
    assert [n.op_type for n in out.graph.node] == ["Relu", "Mul"]
    assert report["passes"][0]["verification"]["passed"]


def test_invalid_graph_is_caught_and_can_be_rolled_back():
    model = _relu_model()
    with pytest.raises(PassError, match="invalid model"):
        _manager("test-break-graph", model).run(model, PassContext(), {})
    report = {}
    out = _manager("test-break-graph,cleanup", model, skip_failing=True).run(model, PassContext(), report)
    assert report["passes"][0]["rolled_back"]
    assert out.graph.node[0].input[0] == "x"


def test_input_model_is_never_modified():
    model = _relu_model()
    before = model.SerializeToString()
    _manager("test-scale-outputs{factor=1}", model).run(model, PassContext(), {})
    assert model.SerializeToString() == before


def test_registry_meta():
    for name, cls in registry().items():
        assert name == cls.name and cls.summary and cls.__doc__ is not None or cls.summary
        assert name.replace("-", "").isalnum() and name == name.lower()
