"""cleanup: identity removal, constant and shape folding, dead code, subgraphs, real models."""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_same_outputs, make_model, tensor
from graphopt.ir import load_model
from graphopt.passes import PassContext, create_pass
from graphopt.verify import synthesize_inputs


def run_cleanup(model, **options):
    return create_pass("cleanup", options).run(onnx.ModelProto.FromString(model.SerializeToString()), PassContext())


def test_identity_dropout_and_dead_code_removed():
    nodes = [helper.make_node("Identity", ["x"], ["a"]),
             helper.make_node("Dropout", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["y"]),
             helper.make_node("Neg", ["x"], ["unused"])]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])])
    result = run_cleanup(model)
    assert [n.op_type for n in result.model.graph.node] == ["Relu"]
    assert result.stats["identities_removed"] == 2 and result.stats["dead_nodes_removed"] == 1
    assert_same_outputs(model, result.model, synthesize_inputs(model, 1)[0])


@pytest.mark.parametrize("mask_read", [False, True])
def test_dropout_with_a_mask_output_goes_only_when_the_mask_is_unread(mask_read):
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"]), helper.make_node("Relu", ["d"], ["y"])]
    if mask_read:
        nodes.append(helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT))
    outputs = [tensor("y", [2, 3])] + ([tensor("m", [2, 3])] if mask_read else [])
    model = make_model(nodes, [tensor("x", [2, 3])], outputs)
    result = run_cleanup(model)
    assert [n.op_type for n in result.model.graph.node] == (["Dropout", "Relu", "Cast"] if mask_read else ["Relu"])
    assert_same_outputs(model, result.model, synthesize_inputs(model, 1)[0])


def test_identity_feeding_graph_output_keeps_output_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    model = make_model(nodes, [tensor("x", [4])], [tensor("y", [4])])
    result = run_cleanup(model)
    assert [(n.op_type, n.output[0]) for n in result.model.graph.node] == [("Relu", "y")]


def test_identity_between_input_and_output_is_kept():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [tensor("x", [4])], [tensor("y", [4])])
    assert not run_cleanup(model).changed


def test_constant_subgraph_folded_and_shape_folded():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
             helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["xr"]),
             helper.make_node("MatMul", ["xr", "wt"], ["y"])]
    model = make_model(nodes, [tensor("x", [4, 3])], [tensor("y", [4, 2])], {"w": w})
    result = run_cleanup(model)
    ops = [n.op_type for n in result.model.graph.node]
    assert "Transpose" not in ops and "Shape" not in ops
    assert result.stats["constants_folded"] >= 1 and result.stats["shapes_folded"] == 1
    assert_same_outputs(model, result.model, synthesize_inputs(model, 1)[0])


def test_constant_of_shape_weight_generator_is_not_materialized():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["w"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 256])], [tensor("y", [1, 256])],
                       {"shape": np.array([256, 256], np.int64)})
    result = run_cleanup(model)
    assert "ConstantOfShape" in [n.op_type for n in result.model.graph.node]
    assert result.model.ByteSize() < 10_000


def test_if_subgraph_reads_from_outer_scope_are_kept():
    then_g = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [], [tensor("t", [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [], [tensor("e", [2])])
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    model = make_model(nodes, [tensor("x", [2]), tensor("c", [], TensorProto.BOOL)], [tensor("y", [2])])
    result = run_cleanup(model)
    onnx.checker.check_model(result.model, full_check=True)
    for cond in (True, False):
        feeds = {"x": np.array([-1.0, 2.0], np.float32), "c": np.array(cond)}
        assert_same_outputs(model, result.model, feeds)


def _backend_models():
    import onnx.backend.test

    root = os.path.join(os.path.dirname(onnx.backend.test.__file__), "data", "light")
    return sorted(glob.glob(os.path.join(root, "*.onnx")))[:4]


@pytest.mark.parametrize("path", _backend_models(), ids=os.path.basename)
def test_real_models_stay_valid_and_equal(path):
    model = load_model(path)
    result = run_cleanup(model)
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(model, result.model, synthesize_inputs(model, 1)[0])
    assert result.model.ByteSize() <= model.ByteSize() + 64 * len(model.graph.node)


def _zoo(name):
    from models import zoo

    try:
        return getattr(zoo, name)()
    except zoo.ModelUnavailable as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("name,max_nodes", [("ppocr_cls", 240), ("silero_vad", 686), ("digits_transformer", 120)])
def test_third_party_models_through_the_manager(name, max_nodes):
    import graphopt

    result = graphopt.optimize(str(_zoo(name)), passes="cleanup")
    assert result.report["verification"]["passed"]
    assert result.report["passes"][0]["verification"]["passed"]
    assert result.report["output"]["nodes"] <= max_nodes
    onnx.checker.check_model(result.model, full_check=True)


def test_constant_nodes_become_initializers():
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(np.ones((3, 3), np.float32))),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make_model(nodes, [tensor("x", [1, 3])], [tensor("y", [1, 3])])
    result = run_cleanup(model)
    assert [n.op_type for n in result.model.graph.node] == ["MatMul"]
    assert result.stats["constants_to_initializers"] == 1
    assert_same_outputs(model, result.model, synthesize_inputs(model, 1)[0])


def test_ir3_models_keep_initializers_as_inputs():
    import graphopt
    from models import zoo

    path = next(p for n, p in zoo.onnx_backend_models().items() if "PixelShuffle" in n)
    result = graphopt.optimize(str(path), passes="cleanup")
    model = result.model
    assert model.ir_version == 3
    assert {t.name for t in model.graph.initializer} <= {i.name for i in model.graph.input}
