"""One view over every way an exporter writes a constant.

Initializers, `Constant` nodes (PaddlePaddle exports weights this way) and
`ConstantOfShape` of a constant shape (the onnx backend test 'light' models build their
weights like that) all answer `ConstantView.get(name)`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


class ConstantView:
    """Name -> numpy value for every tensor of `graph` known at compile time."""

    def __init__(self, graph: onnx.GraphProto, initializer_inputs_constant: bool = False):
        self._initializers = {t.name: t for t in graph.initializer}
        self._producers = {}
        for node in graph.node:
            for out in node.output:
                self._producers[out] = node
        # An initializer that is also a graph input may be overridden at run time, except in
        # IR < 4 models, which must list every weight as an input.
        self._graph_inputs = set() if initializer_inputs_constant else {i.name for i in graph.input}
        self._cache: dict[str, np.ndarray] = {}

    def may_be_constant(self, name: str) -> bool:
        """Cheap test (no tensor is decoded): initializer or output of a constant-making node."""
        if name in self._cache or (name in self._initializers and name not in self._graph_inputs):
            return True
        node = self._producers.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "Constant":
            return True
        if node.op_type in ("ConstantOfShape", "Identity"):
            return not node.input or self.may_be_constant(node.input[0])
        return False

    def is_constant(self, name: str) -> bool:
        return self.get(name) is not None

    def get(self, name: str) -> np.ndarray | None:
        if name in self._cache:
            return self._cache[name]
        value = self._lookup(name)
        if value is not None:
            self._cache[name] = value
        return value

    def _lookup(self, name: str) -> np.ndarray | None:
        # An initializer that is also a graph input can be overridden at run time.
        if name in self._initializers and name not in self._graph_inputs:
            return numpy_helper.to_array(self._initializers[name])
        node = self._producers.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant":
            return constant_node_value(node)
        if node.op_type == "ConstantOfShape":
            shape = self.get(node.input[0]) if node.input else np.zeros(0, np.int64)
            if shape is None or np.prod(shape) > 2**26:
                return None
            fill = np.zeros(1, np.float32)
            for attr in node.attribute:
                if attr.name == "value":
                    fill = numpy_helper.to_array(attr.t).reshape(-1)
            return np.full(tuple(int(d) for d in shape), fill[0], dtype=fill.dtype)
        if node.op_type == "Identity":
            return self.get(node.input[0])
        return None


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """Value of an ONNX `Constant` node, whichever attribute carries it."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None
