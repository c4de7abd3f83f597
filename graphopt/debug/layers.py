"""Per-layer weight statistics for the report: sparsity of each Conv/Gemm/MatMul weight.

For the weight W of a layer (through a DequantizeLinear, the stored integers compared
with their zero point, since q == zp is exactly 0.0 after dequantization):

    zero_fraction            = #{w == 0} / #W
    channel_zero_fraction[j] = zero fraction of output-channel bin j (channels grouped
                               into at most `bins` equal bins along the output axis)

The HTML report draws channel_zero_fraction as a heat map (rows: layers, columns: bins).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from graphopt.ir import ConstantView, weight_axes
from graphopt.ir.axes import WEIGHT_INPUT

log = logging.getLogger(__name__)

CHANNEL_BINS = 32


def layer_stats(model, bins: int = CHANNEL_BINS) -> list[dict]:
    """One row per Conv/ConvTranspose/Gemm/MatMul with a constant weight, in graph order."""
    from graphopt.api import as_model

    model = as_model(model)
    view = ConstantView(model.graph)
    made = {o: n for n in model.graph.node for o in n.output if o}
    rows = []
    for node in model.graph.node:
        slot = WEIGHT_INPUT.get(node.op_type)
        if slot is None or len(node.input) <= slot:
            continue
        name, zeros = _weight_zeros(node.input[slot], view, made)
        if zeros is None or zeros.ndim < 2:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = weight_axes(node.op_type, attrs, zeros.ndim)
        rows.append({"node": node.name, "op_type": node.op_type, "weight": name,
                     "shape": list(zeros.shape), "params": int(zeros.size),
                     "zero_fraction": float(zeros.mean()),
                     "channel_zero_fraction": _channel_bins(zeros, axes.output, bins)})
    return rows


def _weight_zeros(name, view, made) -> tuple[str, np.ndarray | None]:
    """(weight name, boolean array of exact zeros), looking through DequantizeLinear."""
    value = view.get(name)
    if value is not None:
        return name, np.asarray(value) == 0
    node = made.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return name, None
    q = view.get(node.input[0])
    if q is None:
        return name, None
    zp = view.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zp is None:
        return node.input[0], np.asarray(q) == 0
    zp = np.asarray(zp)
    block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
    if block and zp.ndim == np.ndim(q):  # block-wise zero point: repeat it over each block
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % zp.ndim
        zp = np.repeat(zp, block, axis=axis)[tuple(slice(0, d) for d in np.shape(q))]
    elif zp.ndim == 1 and zp.size > 1:  # per-axis zero point: broadcast along the node's axis
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = zp.size
        zp = zp.reshape(shape)
    return node.input[0], np.asarray(q).astype(np.int64) == zp.astype(np.int64)


def _channel_bins(zeros: np.ndarray, axis: int, bins: int) -> list[float]:
    per_channel = np.moveaxis(zeros, axis % zeros.ndim, 0).reshape(zeros.shape[axis % zeros.ndim], -1).mean(axis=1)
    groups = np.array_split(per_channel, min(bins, per_channel.size))
    return [round(float(g.mean()), 4) for g in groups]
