"""What a source file is, and how the user describes its inputs.

A *source* is a model in a framework's own format. `detect(path)` names its kind from the
suffix (files) or the marker file inside (directories: `saved_model.pb` is a TensorFlow
SavedModel, `config.json` a HuggingFace model). `ImportedModel` is what every importer
returns: the ONNX model plus a `reference` callable that runs the framework's own model on
ONNX-named feeds, so a caller can compare the two on the same inputs.

Input shapes are written `name:1x3x224x224` (several separated by commas; the name may be
left out to mean "the next input in order"; an optional `:int64` suffix sets the dtype). A dim
written `batch=2` is dynamic: it is exported as the symbolic dim `batch` and traced at size 2.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from graphopt.errors import InputError

log = logging.getLogger(__name__)

# suffix -> kind; the order is the order shown to users in error messages
SUFFIX_KINDS = {
    ".onnx": "onnx",
    ".pt2": "torch-export",
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".joblib": "sklearn",
    ".tflite": "tflite",
}
DIRECTORY_KINDS = {"saved_model.pb": "tf-savedmodel", "config.json": "huggingface"}
SUPPORTED_TEXT = ", ".join(SUFFIX_KINDS) + ", TensorFlow SavedModel dir, HuggingFace model dir"

_DTYPES = {"float32": np.float32, "float": np.float32, "float16": np.float16, "float64": np.float64,
           "int64": np.int64, "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


@dataclass
class ImportedModel:
    """An ONNX model converted from a framework, with a way to run the original."""

    model: onnx.ModelProto
    framework: str
    reference: Callable[[dict[str, np.ndarray]], list[np.ndarray]] | None = None
    # feeds built from the example inputs the model was traced with (valid token ids etc.)
    example_feeds: dict[str, np.ndarray] | None = None
    exporter: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class InputSpec:
    name: str | None
    shape: list[int]
    dynamic: dict[int, str]
    dtype: type = np.float32


def detect(path) -> str | None:
    """The source kind of `path`, or None when graphopt does not recognize it."""
    path = Path(path)
    if path.is_dir():
        for marker, kind in DIRECTORY_KINDS.items():
            if (path / marker).is_file():
                return kind
        return None
    return SUFFIX_KINDS.get(path.suffix.lower())


def is_importable(path) -> bool:
    """True for a non-ONNX source that `import_source` knows how to convert."""
    kind = detect(path)
    return kind is not None and kind != "onnx"


def unsupported(path) -> InputError:
    path = Path(path)
    if path.is_dir():
        what = "directory without saved_model.pb or config.json"
    else:
        what = f"'{path.suffix or path.name}'"
    return InputError(f"{path}: unsupported source format {what} (supported: {SUPPORTED_TEXT})")


def parse_input_shapes(text: str | None) -> list[InputSpec]:
    """Parse `name:1x3x8x8,ids:batch=2xseq=16:int64` into InputSpecs (see module doc)."""
    if not text:
        return []
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = item.split(":")
        name, dims, dtype = None, None, np.float32
        if len(parts) == 1:
            dims = parts[0]
        elif len(parts) == 2 and parts[1].lower() in _DTYPES:
            dims, dtype = parts[0], _DTYPES[parts[1].lower()]
        elif len(parts) == 2:
            name, dims = parts
        elif len(parts) == 3 and parts[2].lower() in _DTYPES:
            name, dims, dtype = parts[0], parts[1], _DTYPES[parts[2].lower()]
        else:
            raise InputError(f"input shape {item!r}: expected name:1x3x224x224[:dtype]")
        shape, dynamic = [], {}
        for axis, token in enumerate(dims.lower().split("x")):
            match = re.fullmatch(r"(?:([a-z_][a-z0-9_]*)=)?(\d+)", token.strip())
            if not match or int(match.group(2)) <= 0:
                raise InputError(f"input shape {item!r}: dim {token!r} is not a positive integer "
                                 "or name=size")
            shape.append(int(match.group(2)))
            if match.group(1):
                dynamic[axis] = match.group(1)
        specs.append(InputSpec(name or None, shape, dynamic, dtype))
    return specs


def example_arrays(specs: list[InputSpec], names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded arrays for `names` (the model's inputs, in order) from the user's specs.

    Named specs match by name; unnamed ones fill the remaining inputs in order.
    Floats ~ N(0, 1); integers are zeros (safe indices); booleans true.
    """
    by_name = {s.name: s for s in specs if s.name}
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise InputError(f"--input-shapes names {unknown} are not inputs of the model (inputs: {names})")
    positional = [s for s in specs if not s.name]
    rng = np.random.default_rng(seed)
    arrays, matched = {}, {}
    for name in names:
        spec = by_name.get(name) or (positional.pop(0) if positional else None)
        if spec is None:
            raise InputError(f"no shape for input {name!r}: pass --input-shapes "
                             f"{name}:1x3x224x224 (inputs: {', '.join(names)})")
        matched[name] = spec
        if np.issubdtype(spec.dtype, np.floating):
            arrays[name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        elif spec.dtype is np.bool_:
            arrays[name] = np.ones(spec.shape, dtype=bool)
        else:
            arrays[name] = np.zeros(spec.shape, dtype=spec.dtype)
    if positional:
        raise InputError(f"--input-shapes gives {len(specs)} shapes but the model has "
                         f"{len(names)} inputs ({', '.join(names)})")
    return arrays


def dynamic_axes_from(specs: list[InputSpec], names: list[str]) -> dict[str, dict[int, str]]:
    """Named dims become dynamic axes; with none named, axis 0 of every input is `batch`."""
    by_name = {s.name: s for s in specs if s.name}
    positional = [s for s in specs if not s.name]
    axes = {}
    for name in names:
        spec = by_name.get(name) or (positional.pop(0) if positional else None)
        if spec is not None and spec.dynamic:
            axes[name] = dict(spec.dynamic)
    if not axes:
        return {name: {0: "batch"} for name in names}
    return axes
