"""Shared fixtures: small graph builders, the bundled models, onnxruntime helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the models/ package
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8) -> onnx.ModelProto:
    """A checked model from helper-built pieces; initializers given as {name: array}."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()]
    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def run_ort(model, feeds):
    from graphopt.verify import run_model

    return run_model(model, feeds)


def assert_same_outputs(a, b, feeds, rtol=1e-5):
    out_a, out_b = run_ort(a, feeds), run_ort(b, feeds)
    assert out_a.keys() == out_b.keys()
    for name in out_a:
        scale = max(float(np.max(np.abs(out_a[name]))), 1e-6)
        assert np.max(np.abs(out_a[name] - out_b[name])) <= rtol * scale + 1e-7, name


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits_cnn_path():
    return ROOT / "models" / "digits_cnn.onnx"


@pytest.fixture(scope="session")
def digits_test_path():
    return ROOT / "models" / "digits_test.npz"


@pytest.fixture(scope="session")
def digits_calib_path():
    return ROOT / "models" / "digits_calib.npz"
