"""Wrappers over onnx.checker and shape inference that scale to large models.

Protobuf cannot serialize more than 2 GB, so big models are checked through a file with
external data; shape inference on a copy whose large initializers are stripped keeps it fast.
"""

from __future__ import annotations

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
