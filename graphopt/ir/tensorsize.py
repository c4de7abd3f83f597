"""How many bytes a tensor's declared shape and type need, without reading its data.

bytes = ceil(prod(dims) * bits / 8), where bits is 8 * itemsize for ordinary types and
4 or 2 for the packed sub-byte types (INT4, UINT4, FLOAT4E2M1, INT2, UINT2), which store
two or four values per byte in `raw_data` and in external files. Used to refuse tensors
whose declared size would exhaust memory *before* anything is allocated, and to check that
stored data (raw bytes or an external file range) matches the declaration.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from graphopt.errors import InputError

MAX_TENSOR_BYTES = 8 << 30  # one tensor above this is refused: it would not fit a build machine

_T = onnx.TensorProto
PACKED_BITS = {getattr(_T, name): bits for name, bits in
               (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
               if hasattr(_T, name)}
# types whose byte layout this module does not claim to know: sizes are not cross-checked
_UNSIZED = {getattr(_T, name) for name in ("STRING", "FLOAT6E2M3", "FLOAT6E3M2") if hasattr(_T, name)}


def element_count(tensor: onnx.TensorProto) -> int:
    """prod(dims) as a Python int (no overflow), 1 for a scalar."""
    return math.prod(int(d) for d in tensor.dims) if tensor.dims else 1


def value_bits(data_type: int) -> int | None:
    """Bits per stored value, or None for strings and layouts not modelled here."""
    if data_type in PACKED_BITS:
        return PACKED_BITS[data_type]
    if data_type in _UNSIZED:
        return None
    try:
        return 8 * np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def declared_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's shape and type need in raw form; None when not computable."""
    bits = value_bits(tensor.data_type)
    if bits is None:
        return None
    return (element_count(tensor) * bits + 7) // 8


def check_declared_size(tensor: onnx.TensorProto, label: str) -> None:
    """Refuse negative dims, unknown types and tensors too large to hold in memory."""
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"{label}: negative dimension {list(tensor.dims)}")
    known = tensor.data_type in _UNSIZED or tensor.data_type in PACKED_BITS
    if not known:
        try:
            helper.tensor_dtype_to_np_dtype(tensor.data_type)
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{label}: unknown data type {tensor.data_type}") from None
    size = declared_bytes(tensor)
    if size is not None and size > MAX_TENSOR_BYTES:
        raise InputError(f"{label}: declared size {list(tensor.dims)} would need "
                         f"{size / 2**30:.1f} GiB (limit {MAX_TENSOR_BYTES / 2**30:.0f} GiB)")


def check_tensor_storage(tensor: onnx.TensorProto, label: str) -> None:
    """check_declared_size, then (for data stored in the file) that the data holds exactly
    the values the shape declares: a mismatch would crash whoever reshapes it later."""
    check_declared_size(tensor, label)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    count, stored = element_count(tensor), stored_elements(tensor)
    if stored is not None and stored != count:
        raise InputError(f"{label}: shape {list(tensor.dims)} holds {count} values but the data has {stored}")


def stored_elements(tensor: onnx.TensorProto) -> int | None:
    """Values the tensor's data holds (raw bytes or typed fields); None when not countable."""
    if tensor.HasField("raw_data"):
        bits = value_bits(tensor.data_type)
        if bits is None:
            return None
        if bits < 8:  # packed sub-byte values: the byte count decides, padding included
            return element_count(tensor) if len(tensor.raw_data) == declared_bytes(tensor) else \
                len(tensor.raw_data) * 8 // bits
        return len(tensor.raw_data) // (bits // 8)
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        values = getattr(tensor, field)
        if len(values):
            if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
                return len(values) // 2
            if tensor.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16) or tensor.data_type in PACKED_BITS:
                return None
            return len(values)
    if len(tensor.string_data):
        return len(tensor.string_data)
    return 0 if tensor.data_type != onnx.TensorProto.UNDEFINED else None
