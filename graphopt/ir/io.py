"""Loading and saving models without surprises.

Loading keeps opsets, metadata and names; external data is read only from inside the
model's own directory (a `location` that escapes it is refused). Saving is atomic: the
model is written to a temporary file beside the target and renamed, so a failure never
leaves a half-written output; models over 2 GB are written with external data.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from graphopt.errors import InputError

PROTOBUF_LIMIT = 2**31 - 1
SUPPORTED_IR_VERSIONS = range(3, 12)


def load_model(path, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file; raise InputError with one clear line when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from err
    model = parse_model_bytes(data, str(path))
    if load_external_data and _has_external_data(model):
        _check_external_locations(model, path.parent)
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: cannot load external data ({err})") from err
    return model


def parse_model_bytes(data: bytes, label: str = "model") -> onnx.ModelProto:
    """Parse serialized ModelProto bytes, refusing empty, non-ONNX or truncated data."""
    if not data:
        raise InputError(f"{label}: file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise InputError(f"{label}: not an ONNX model (protobuf parse failed)") from err
    if not model.HasField("graph") or model.ir_version == 0:
        raise InputError(f"{label}: not an ONNX model (no graph or IR version)")
    if model.ir_version not in SUPPORTED_IR_VERSIONS:
        raise InputError(
            f"{label}: IR version {model.ir_version} is outside the supported range "
            f"{SUPPORTED_IR_VERSIONS.start}-{SUPPORTED_IR_VERSIONS.stop - 1}"
        )
    return model


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.external_data_helper._get_all_tensors(model)
    )


def _check_external_locations(model: onnx.ModelProto, base: Path) -> None:
    base = base.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if os.path.isabs(location) or base not in target.parents:
            raise InputError(
                f"tensor {tensor.name!r}: external data location {location!r} "
                "points outside the model's directory; refused"
            )
        if not target.is_file():
            raise InputError(f"tensor {tensor.name!r}: external data file {location!r} not found")


def save_model(model: onnx.ModelProto, path, force: bool = True) -> Path:
    """Write `model` atomically; large models get external data beside the output."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path}: output exists (use --force to overwrite)")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: output directory does not exist")
    if model.ByteSize() > PROTOBUF_LIMIT:
        return _save_with_external_data(model, path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(model.SerializeToString(deterministic=True))
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def _save_with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    data_name = path.name + ".data"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(copy, str(tmpdir / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        os.replace(tmpdir / data_name, path.parent / data_name)
        os.replace(tmpdir / path.name, path)
    finally:
        for leftover in tmpdir.iterdir():
            _unlink_quietly(leftover)
        tmpdir.rmdir()
    return path


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def clone(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def serialize(model: onnx.ModelProto) -> bytes:
    """Deterministic bytes, the form handed to onnxruntime and compared for determinism."""
    return model.SerializeToString(deterministic=True)
