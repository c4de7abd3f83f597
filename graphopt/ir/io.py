"""Loading and saving models without surprises.

Loading keeps opsets, metadata and names; external data is read only from inside the
model's own directory (a `location` that escapes it by `..`, an absolute path or a symlink
is refused), and only after its range is checked: 0 <= offset, offset + length <= file
size, and length == the bytes the tensor's shape and type declare (which must stay under
MAX_TENSOR_BYTES), so a hostile file cannot make us read gigabytes. Files over 2 GB cannot
be one protobuf and are refused before reading.

Saving is atomic: the model is written to a temporary file beside the target and renamed
(rename within one directory is atomic on POSIX), so a failure never leaves a half-written
output; models over 2 GB are written with external data `<name>.data` beside the output.
Write failures (disk full, a directory in the way) are the user's environment, not a
compiler bug: they raise InputError.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from graphopt.errors import InputError
from graphopt.ir.tensorsize import check_declared_size, check_tensor_storage, declared_bytes

PROTOBUF_LIMIT = 2**31 - 1
# IR 3 is the first with opset imports; the newest is what the installed onnx writes
# (helper.make_model's default), which onnxruntime also loads - refusing it refused fresh models
SUPPORTED_IR_VERSIONS = range(3, onnx.IR_VERSION + 1)
MAX_EXTERNAL_BYTES = 64 << 30  # all external data of one model
SAVE_EXTERNAL_ABOVE = PROTOBUF_LIMIT  # serialized size above which save_model writes <name>.data


def load_model(path, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file; raise InputError with one clear line when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        if size > PROTOBUF_LIMIT:
            raise InputError(f"{path}: {size / 2**30:.1f} GiB is over protobuf's 2 GB limit; "
                             "not a single-file ONNX model")
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from err
    model = parse_model_bytes(data, str(path))
    if load_external_data and _has_external_data(model):
        _check_external_locations(model, path.parent)
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as err:
            raise InputError(f"{path}: cannot load external data ({str(err).strip().splitlines()[0]})") from err
    return model


def external_data_files(path) -> list[Path]:
    """Files a model's external data lives in (resolved), so callers can refuse to write over
    them; [] when the model is unreadable (loading it reports why)."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > PROTOBUF_LIMIT:
            return []
        model = parse_model_bytes(path.read_bytes(), str(path))
    except (OSError, InputError):
        return []
    files = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            if location and "\0" not in location:
                files.add((path.parent / location).resolve())
    return sorted(files)


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
    bad = _non_utf8_string(model)
    if bad:
        raise InputError(f"{label}: not a valid ONNX model ({bad} is not UTF-8 text; corrupt file?)")
    # every command (inspect, cost, diff ...) gets this: a tensor whose data disagrees with its
    # shape, or whose shape would need terabytes, is refused before anyone materializes it
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        check_tensor_storage(tensor, f"{label}: tensor {tensor.name!r}")
    return model


def _non_utf8_string(message) -> str | None:
    """Name of the first string field holding bytes that are not UTF-8, else None.

    ONNX is proto2, which does not validate UTF-8, so python-protobuf hands such a field
    back as `bytes`; every name comparison downstream would then fail with a TypeError.
    """
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for item in value if _repeated(field) else (value,):
                found = _non_utf8_string(item)
                if found:
                    return found
        elif field.type == field.TYPE_STRING:
            items = value if _repeated(field) else (value,)
            if any(isinstance(item, bytes) for item in items):
                return f"{message.DESCRIPTOR.name}.{field.name}"
    return None


def _repeated(field) -> bool:
    # protobuf 6 has is_repeated; older releases only the label
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.external_data_helper._get_all_tensors(model)
    )


def _check_external_locations(model: onnx.ModelProto, base: Path) -> None:
    base = base.resolve()
    total = 0
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += _check_external_tensor(tensor, base)
    # many tensors may each pass the per-tensor limit yet point at the same huge file
    if total > MAX_EXTERNAL_BYTES:
        raise InputError(f"external data totals {total / 2**30:.1f} GiB, over the "
                         f"{MAX_EXTERNAL_BYTES / 2**30:.0f} GiB limit")


def _check_external_tensor(tensor: onnx.TensorProto, base: Path) -> int:
    """Refuse an unsafe or inconsistent external reference; return the bytes it would read."""
    label = f"tensor {tensor.name!r}"
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if not location or "\0" in location:
        raise InputError(f"{label}: external data has no usable location")
    # resolve() follows symlinks, so a link inside the directory pointing out is caught too
    target = (base / location).resolve()
    if os.path.isabs(location) or base not in target.parents:
        raise InputError(f"{label}: external data location {location!r} "
                         "points outside the model's directory; refused")
    if not target.is_file():
        raise InputError(f"{label}: external data file {location!r} not found")
    check_declared_size(tensor, label)
    offset = _external_int(info, "offset", 0, label)
    available = target.stat().st_size - offset
    if available < 0:
        raise InputError(f"{label}: external data offset {offset} is past the end of {location!r} "
                         f"({target.stat().st_size} bytes)")
    length = _external_int(info, "length", available, label)
    if length > available:
        raise InputError(f"{label}: external data range offset {offset} + length {length} "
                         f"exceeds {location!r} ({target.stat().st_size} bytes)")
    expected = declared_bytes(tensor)
    if expected is not None and length != expected:
        raise InputError(f"{label}: external data length {length} bytes does not match shape "
                         f"{list(tensor.dims)} ({expected} bytes)")
    return length


def _external_int(info: dict, key: str, default: int, label: str) -> int:
    if key not in info:
        return default
    try:
        value = int(info[key])
    except ValueError:
        raise InputError(f"{label}: external data {key} {info[key]!r} is not an integer") from None
    if value < 0:
        raise InputError(f"{label}: external data {key} {value} is negative")
    return value


def save_model(model: onnx.ModelProto, path, force: bool = True) -> Path:
    """Write `model` atomically; large models get external data beside the output."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path}: output exists (use --force to overwrite)")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name for the output")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: output directory does not exist")
    try:
        if model.ByteSize() > SAVE_EXTERNAL_ABOVE:
            return _save_with_external_data(model, path, force)
        return _save_single_file(model, path)
    except OSError as err:
        raise InputError(f"{path}: cannot write ({err.strerror or err})") from err


def _save_single_file(model: onnx.ModelProto, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(model.SerializeToString(deterministic=True))
        set_default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def set_default_permissions(path) -> None:
    """mkstemp creates 0600; give the output the mode a plain open() would (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _save_with_external_data(model: onnx.ModelProto, path: Path, force: bool) -> Path:
    data_name = path.name + ".data"
    if (path.parent / data_name).exists() and not force:
        raise InputError(f"{path.parent / data_name}: external data file exists (use --force to overwrite)")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(copy, str(tmpdir / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        for written in (tmpdir / data_name, tmpdir / path.name):
            set_default_permissions(written)
        # data first: a reader of the new model file must always find its data
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
