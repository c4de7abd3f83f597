"""Verification inputs: synthesized from the model's signature, or read from .npz files.

A .npz file holds one array per graph input name with axis 0 = samples. Synthesized data
is seeded: floats ~ N(0, 1), integer inputs that index a Gather table stay below the
table's size (token ids), masks and other integers are ones, booleans true.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from graphopt.errors import InputError
from graphopt.ir.constants import ConstantView

log = logging.getLogger(__name__)

DEFAULT_DIM = {"batch": 1, "batch_size": 1, "n": 1, "sequence": 16, "seq": 16,
               "sequence_length": 16, "seq_len": 16}
NAMED_INTEGERS = {"sr": 16000, "sample_rate": 16000, "sampling_rate": 16000}
MAX_SYNTH_ELEMENTS = 1 << 24
BATCH = 64
MAX_NPZ_BYTES = 8 << 30


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_shape(value: onnx.ValueInfoProto, default_dim: int = 1, last_only: bool = False) -> list[int]:
    """Concrete shape: known dims kept, symbolic ones from their name or `default_dim`.

    With `default_dim` > 1 (a retry after the model rejected small inputs) symbolic dims
    other than the leading batch dim take it, whatever their name; with `last_only` only
    a symbolic last axis does (audio: [batch, samples] beside a state [2, batch, 128]).
    """
    dims = []
    shape = value.type.tensor_type.shape.dim
    symbolic = [i for i, d in enumerate(shape) if not (d.HasField("dim_value") and d.dim_value > 0)]
    for axis, d in enumerate(shape):
        if axis not in symbolic:
            dims.append(d.dim_value)
        elif default_dim > 1 and axis > 0 and (not last_only or axis == len(shape) - 1):
            dims.append(default_dim)
        elif default_dim > 1:
            dims.append(1)
        else:
            dims.append(DEFAULT_DIM.get(d.dim_param.lower(), 1))
    return dims


def synthesize_inputs(model: onnx.ModelProto, count: int = 4, seed: int = 0,
                      shapes: dict[str, list[int]] | None = None,
                      default_dim: int = 1, last_only: bool = False) -> list[dict[str, np.ndarray]]:
    """`count` seeded feed dicts matching the model's inputs (one sample each)."""
    rng = np.random.default_rng(seed)
    limits = _gather_table_sizes(model)
    feeds_list = []
    for _ in range(count):
        feeds = {}
        for value in graph_inputs(model):
            if not value.type.HasField("tensor_type"):
                raise InputError(f"input {value.name!r}: only tensor inputs can be synthesized")
            shape = (shapes or {}).get(value.name) or input_shape(value, default_dim, last_only)
            if int(np.prod(shape)) > MAX_SYNTH_ELEMENTS:
                raise InputError(f"input {value.name!r}: shape {shape} too large to synthesize; pass --inputs")
            dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            if value.name.lower() in NAMED_INTEGERS and np.issubdtype(dtype, np.integer):
                feeds[value.name] = np.full(shape, NAMED_INTEGERS[value.name.lower()], dtype=dtype)
                continue
            feeds[value.name] = _random_array(rng, shape, dtype, limits.get(value.name))
        feeds_list.append(feeds)
    return feeds_list


def _random_array(rng, shape, dtype, index_limit):
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool)
    if index_limit:
        return rng.integers(0, index_limit, size=shape).astype(dtype)
    return np.ones(shape, dtype=dtype)


def _gather_table_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Integer graph inputs used as Gather indices into a constant table: table size."""
    constants = ConstantView(model.graph)
    sizes = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2:
            table = constants.get(node.input[0])
            if table is not None and table.ndim >= 1:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                sizes[node.input[1]] = int(table.shape[axis])
    return sizes


def load_npz(path, model: onnx.ModelProto | None = None,
             max_samples: int | None = None) -> list[dict[str, np.ndarray]]:
    """Feed dicts from an .npz (axis 0 = samples), checked against `model`'s inputs."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such data file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a readable .npz file (not a zip archive; write one with numpy.savez)")
    _check_declared_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError) as err:
        raise InputError(f"{path}: not a readable .npz file ({err})") from err
    if not arrays:
        raise InputError(f"{path}: contains no arrays")
    if model is not None:
        arrays = _match_model_inputs(arrays, model, path)
    counts = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise InputError(f"{path}: arrays must share a non-empty sample axis 0 (got {sorted(counts)})")
    n = counts.pop()
    if max_samples:
        n = min(n, max_samples)
    step = BATCH if model is not None and _dynamic_batch(model) else 1
    return [{k: v[i:min(i + step, n)] for k, v in arrays.items()} for i in range(0, n, step)]


def _check_declared_sizes(path: Path) -> None:
    """Refuse arrays whose .npy headers declare more than MAX_NPZ_BYTES in all, before reading
    any data: a few bytes of header (or a zip bomb) must not make us allocate terabytes."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in readers:
                        continue  # np.load reports what it cannot read
                    shape, _, dtype = readers[version](member)
                    total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"{path}: not a readable .npz file ({err})") from err
    if total > MAX_NPZ_BYTES:
        raise InputError(f"{path}: arrays declare {total / 2**30:.1f} GiB, over the "
                         f"{MAX_NPZ_BYTES / 2**30:.0f} GiB limit for data files")


def _dynamic_batch(model: onnx.ModelProto) -> bool:
    """Whether every input's axis 0 is symbolic, so samples can run in one batch."""
    dims = [i.type.tensor_type.shape.dim for i in graph_inputs(model)]
    return all(d and not d[0].HasField("dim_value") for d in dims)


def _match_model_inputs(arrays: dict[str, np.ndarray], model: onnx.ModelProto, path) -> dict:
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"{path}: no array for model input(s) {', '.join(missing)} (has {', '.join(arrays)})")
    matched = {}
    for value in inputs:
        array = arrays[value.name]
        want = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if array.dtype != want:
            if not np.can_cast(array.dtype, want, casting="same_kind"):
                raise InputError(f"{path}: {value.name!r} has dtype {array.dtype}, model expects {want}")
            array = array.astype(want)
        dims = value.type.tensor_type.shape.dim
        if array.ndim != len(dims):
            raise InputError(f"{path}: {value.name!r} has rank {array.ndim}, model expects {len(dims)}")
        for axis, dim in enumerate(dims):
            if axis and dim.HasField("dim_value") and dim.dim_value != array.shape[axis]:
                raise InputError(f"{path}: {value.name!r} has shape {list(array.shape)}, model expects "
                                 f"dim {axis} = {dim.dim_value}")
        matched[value.name] = array
    return matched
