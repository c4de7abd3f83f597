"""Concrete shapes and dtypes for every tensor the cost model reads.

Costs need numbers, not symbols. Graph inputs take the shapes the caller gives
(`input_shapes`); any other symbolic or unknown dim becomes 1 (batch 1, sequence 1 unless
the verify layer's DEFAULT_DIM table names a better default such as a sequence length).
Then ONNX shape inference with data propagation fills the rest. Exporters sometimes
leave shapes it cannot follow (dynamic Reshape targets computed at run time); for those,
when the model is small enough, one onnxruntime run on synthesized inputs with every
intermediate exposed as an output reads the real shapes.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphopt.ir import infer_shapes
from graphopt.ir.subgraphs import iter_graphs

log = logging.getLogger(__name__)

PROBE_LIMIT_BYTES = 300 * 2**20   # running the model to learn shapes is fine below this


class ShapeTable:
    """name -> (shape tuple, ONNX elem_type); `known(name)` is False when unresolved."""

    def __init__(self):
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.types: dict[str, int] = {}

    def add(self, name: str, shape, elem_type: int) -> None:
        if shape is not None:
            self.shapes[name] = tuple(int(d) for d in shape)
        if elem_type:
            self.types.setdefault(name, elem_type)

    def known(self, name: str) -> bool:
        return name in self.shapes

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.shapes.get(name)

    def numel(self, name: str) -> int:
        shape = self.shapes.get(name)
        return int(np.prod(shape, dtype=np.int64)) if shape is not None else 0

    def elem_type(self, name: str) -> int:
        return self.types.get(name, TensorProto.FLOAT)


def fix_inputs(model: onnx.ModelProto, input_shapes: dict | None) -> onnx.ModelProto:
    """Copy of `model` whose graph inputs have concrete dims."""
    from graphopt.verify.inputs import input_shape  # one table of symbolic-dim defaults

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    inits = {t.name for t in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in inits or not value.type.HasField("tensor_type"):
            continue
        dims = list((input_shapes or {}).get(value.name) or input_shape(value))
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            shape.dim.add().dim_value = int(d)
    return fixed


def resolve(model: onnx.ModelProto, input_shapes: dict | None = None) -> tuple[onnx.ModelProto, ShapeTable]:
    """(shape-inferred model with fixed inputs, table of every tensor's shape and dtype)."""
    fixed = fix_inputs(model, input_shapes)
    try:
        inferred = infer_shapes(fixed)
    except Exception as err:  # inference is best effort; the probe below may still work
        log.debug("shape inference failed: %s", err)
        inferred = fixed
    table = _table_from_model(inferred)
    missing = _unresolved(inferred, table)
    if missing and inferred.ByteSize() < PROBE_LIMIT_BYTES:
        log.debug("%d tensors without static shape; probing with onnxruntime", len(missing))
        _probe(inferred, table, input_shapes)
    return inferred, table


def _table_from_model(model: onnx.ModelProto) -> ShapeTable:
    table = ShapeTable()
    for graph in iter_graphs(model.graph):
        for t in graph.initializer:
            table.add(t.name, t.dims, t.data_type)
        for value in list(graph.input) + list(graph.output) + list(graph.value_info):
            tt = value.type.tensor_type
            if not value.type.HasField("tensor_type"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            static = tt.HasField("shape") and all(d >= 0 for d in dims)
            table.add(value.name, dims if static else None, tt.elem_type)
        for node in graph.node:
            if node.op_type == "Constant":
                _add_constant(table, node)
    return table


def _add_constant(table: ShapeTable, node: onnx.NodeProto) -> None:
    from graphopt.ir import constant_node_value

    value = constant_node_value(node)
    if value is not None:
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        table.add(node.output[0], value.shape, elem)


def _unresolved(model: onnx.ModelProto, table: ShapeTable) -> list[str]:
    return [o for n in model.graph.node for o in n.output if o and not table.known(o)]


def _probe(model: onnx.ModelProto, table: ShapeTable, input_shapes: dict | None) -> None:
    """Run the model once with every top-level tensor as an output and record shapes."""
    try:
        from graphopt.verify.inputs import synthesize_inputs
        from graphopt.verify.runner import make_session

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        existing = {o.name for o in probe.graph.output}
        for node in probe.graph.node:
            for out in node.output:
                if out and out not in existing:
                    probe.graph.output.append(onnx.ValueInfoProto(name=out))
                    existing.add(out)
        session = make_session(probe, threads=1)
        feeds = synthesize_inputs(model, count=1, shapes=input_shapes)[0]
        names = [o.name for o in session.get_outputs()]
        for name, value in zip(names, session.run(names, feeds)):
            if isinstance(value, np.ndarray) and not table.known(name):
                table.add(name, value.shape, helper.np_dtype_to_tensor_dtype(value.dtype))
    except Exception as err:  # a model ORT cannot run keeps its unknown shapes (bytes 0)
        log.info("shape probe with onnxruntime failed: %s", str(err).splitlines()[0][:200])
