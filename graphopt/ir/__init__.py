"""Thin helpers over onnx and onnx-graphsurgeon; the only layer that touches their internals."""

from graphopt.ir.axes import WeightAxes, weight_axes
from graphopt.ir.check import check_model, infer_shapes
from graphopt.ir.constants import ConstantView, constant_node_value
from graphopt.ir.graph import (constant_value, declared_value_info, keep_declared_value_info, opset_version, to_graph,
                              to_model)
from graphopt.ir.io import clone, load_model, parse_model_bytes, save_model, serialize
from graphopt.ir.subgraphs import has_subgraphs, iter_graphs

__all__ = [
    "ConstantView", "WeightAxes", "check_model", "clone", "constant_node_value",
    "constant_value", "declared_value_info", "has_subgraphs", "infer_shapes", "iter_graphs",
    "keep_declared_value_info", "load_model",
    "opset_version", "parse_model_bytes", "save_model", "serialize", "to_graph",
    "to_model", "weight_axes",
]
