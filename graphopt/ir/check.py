"""Wrappers over onnx.checker and shape inference that scale to large models.

Protobuf cannot serialize more than 2 GB, so big models are checked through a file with
external data; shape inference on a copy whose large initializers are stripped keeps it fast.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import onnx

from graphopt.ir.io import PROTOBUF_LIMIT


def check_model(model: onnx.ModelProto, full: bool = True) -> None:
    """Raise onnx.checker.ValidationError (or InferenceError) when `model` is invalid."""
    if model.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(model, full_check=full)
        return
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(target), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="model.data")
        onnx.checker.check_model(str(target), full_check=full)


def infer_shapes(model: onnx.ModelProto, strict: bool = False) -> onnx.ModelProto:
    """Shape-inferred copy of `model` (data propagation on, so Shape arithmetic resolves)."""
    if model.ByteSize() >= PROTOBUF_LIMIT:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            onnx.save_model(model, str(src), save_as_external_data=True,
                            all_tensors_to_one_file=True, location="in.data")
            onnx.shape_inference.infer_shapes_path(str(src), str(dst), strict_mode=strict,
                                                   data_prop=True)
            return onnx.load(str(dst))
    return onnx.shape_inference.infer_shapes(model, strict_mode=strict, data_prop=True)


# float initializers with more elements than this are handed to shape inference as typed
# graph inputs (no data): only their shapes matter, and serializing the weights of a large
# model costs more than the inference itself (ResNet-18: ~0.1 s per copy, MiniLM ~0.2 s)
_STUB_ELEMENTS = 1024
_STUB_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE)


def annotate_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself, with the value_info and graph outputs that infer_shapes would give it.

    The same inference as infer_shapes (data propagation on, same value_info, same order),
    run on a light copy whose large float initializers are typed inputs without data, so
    the weights are neither serialized nor copied. Models with subgraphs (whose own
    value_info inference would fill) take infer_shapes' result as it is."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in graph.node for a in n.attribute):
        return infer_shapes(model)
    from graphopt.ir.graph import skeleton

    light = skeleton(model)
    lg = light.graph
    declared = {i.name for i in graph.input}
    for t in graph.initializer:
        if t.data_type in _STUB_TYPES and t.data_location != onnx.TensorProto.EXTERNAL \
                and math.prod(t.dims) > _STUB_ELEMENTS:
            if t.name not in declared:
                lg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            lg.initializer.append(t)
    inferred = infer_shapes(light)
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)
    del graph.output[:]
    graph.output.extend(inferred.graph.output)
    return model
