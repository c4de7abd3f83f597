"""Importing framework models to ONNX: PyTorch modules and files, scikit-learn, TensorFlow,
HuggingFace directories.

`import_model` exports an in-memory torch module; `import_source` converts a file or
directory by its format (see `sources.detect`) and returns an `ImportedModel` whose
`reference` runs the original framework model, which `verify_import` compares with the
ONNX model in onnxruntime. Every framework is imported lazily: graphopt itself needs none.
"""

from __future__ import annotations

import logging
from pathlib import Path

from graphopt.importers.sources import (SUPPORTED_TEXT, ImportedModel, detect, is_importable,
                                        parse_input_shapes, unsupported)
from graphopt.importers.torch_import import DEFAULT_OPSET, import_model
from graphopt.importers.verify import verification_feeds, verify_import

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_OPSET", "SUPPORTED_TEXT", "ImportedModel", "detect", "import_model", "import_source",
           "is_importable", "parse_input_shapes", "verification_feeds", "verify_import"]


def import_source(path, example_inputs=None, input_shapes=None, input_names=None, output_names=None,
                  opset: int = DEFAULT_OPSET, allow_pickle: bool = False) -> ImportedModel:
    """Convert the model at `path` to ONNX.

    example_inputs: tensors/arrays to trace with (PyTorch sources; default: the program's
    own example inputs for .pt2, `input_shapes` for TorchScript). input_shapes: text like
    `input:1x3x224x224` (see importers.sources) or parsed InputSpecs.
    """
    path = Path(path)
    if not path.exists():
        raise_missing(path)
    kind = detect(path)
    log.info("%s: importing as %s", path, kind)
    if kind == "onnx":
        from graphopt.ir import load_model

        return ImportedModel(load_model(path), "onnx", None, None, "none")
    if kind == "torch-export":
        from graphopt.importers.torch_import import import_exported_program

        return import_exported_program(path, opset, input_names, output_names, example_inputs)
    if kind == "torchscript":
        from graphopt.importers.torch_import import import_torchscript

        return import_torchscript(path, input_shapes, opset, output_names, example_inputs)
    if kind == "sklearn":
        if not allow_pickle:
            from graphopt.errors import InputError

            raise InputError(f"{path}: loading a pickle runs code stored in the file; "
                             "pass --allow-pickle (allow_pickle=True) only for files you trust")
        from graphopt.importers.sklearn_import import import_sklearn

        return import_sklearn(path, input_shapes, opset)
    if kind in ("tf-savedmodel", "tflite"):
        from graphopt.importers.tensorflow_import import import_tensorflow

        return import_tensorflow(path, kind, opset)
    if kind == "huggingface":
        from graphopt.importers.hf_import import import_huggingface

        return import_huggingface(path, opset)
    raise unsupported(path)


def raise_missing(path: Path):
    from graphopt.errors import InputError

    raise InputError(f"{path}: no such file or directory")
