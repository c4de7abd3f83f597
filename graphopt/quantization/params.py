"""Scale and zero-point math (uniform affine quantization).

    q = clip(round(x / s) + z, qmin, qmax),   x' = (q - z) * s

Asymmetric:  s = (hi - lo) / (qmax - qmin), z = round(qmin - lo / s), with [lo, hi]
             widened to contain 0 so that 0 is exact (padding, ReLU zeros).
Symmetric:   s = max(|lo|, |hi|) / ((qmax - qmin) / 2), z = 0 for int8, 128 for uint8.
Weights:     symmetric int8 in [-127, 127] (no -128, so s * q never overflows int16 sums
             in VNNI-less kernels), per output channel along the weight-axes table's
             output axis, or int4 block-wise along the reduction axis (blocks of
             `block_size`, s = amax_block / 7, ONNX opset 21 DequantizeLinear block_size).
Bias:        int32, s_b = s_x * s_w (per channel when the weight is), z = 0, so that
             the integer accumulator sum(q_x q_w) + q_b is exactly (y / (s_x s_w)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

QTYPES = {
    "uint8": (TensorProto.UINT8, np.uint8, 0, 255),
    "int8": (TensorProto.INT8, np.int8, -128, 127),
}
EPS = 1e-12


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray       # float32, scalar or per-channel
    zero_point: np.ndarray  # of the quantized dtype
    elem_type: int


def activation_params(lo: float, hi: float, qtype: str, symmetric: bool) -> QParams:
    """Scalar scale / zero point for an activation range."""
    elem, np_type, qmin, qmax = QTYPES[qtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        amax = max(-lo, hi)
        scale = amax / ((qmax - qmin) / 2.0)
        zero = (qmin + qmax + 1) // 2
    else:
        scale = (hi - lo) / (qmax - qmin)
        zero = int(round(qmin - lo / scale)) if scale > 0 else qmin
        zero = min(max(zero, qmin), qmax)
    scale = max(scale, EPS)
    return QParams(np.array(scale, np.float32), np.array(zero, np_type), elem)


def quantize_array(x: np.ndarray, scale, zero, qmin: int, qmax: int) -> np.ndarray:
    q = np.divide(x, scale)
    np.rint(q, out=q)  # in place: weights are the largest arrays the rewrite touches
    if np.any(zero):
        q += zero
    return np.clip(q, qmin, qmax, out=q)


def weight_int8(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale) per tensor (axis None) or per channel along `axis`."""
    w = np.asarray(w, dtype=np.float32)
    other = None if axis is None else tuple(a for a in range(w.ndim) if a != axis)
    # max |w| without an |w| copy
    amax = np.maximum(w.max(axis=other, initial=0.0), -w.min(axis=other, initial=0.0))
    scale = np.maximum(amax / 127.0, EPS).astype(np.float32)
    shaped = scale if axis is None else _along(scale, axis, w.ndim)
    q = quantize_array(w, shaped, 0, -127, 127).astype(np.int8)
    return q, scale


def weight_int4_blocks(w: np.ndarray, axis: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(int4 values as int8 in [-7, 7], scale) with blocks of `block` along `axis`.

    The scale has the weight's shape with dim `axis` = ceil(K / block), the layout
    DequantizeLinear-21 expects for block quantization; the last block may be short.
    """
    w = np.moveaxis(w.astype(np.float32), axis, 0)
    k = w.shape[0]
    nblocks = -(-k // block)
    pad = nblocks * block - k
    padded = np.concatenate([w, np.zeros((pad,) + w.shape[1:], np.float32)]) if pad else w
    blocks = padded.reshape((nblocks, block) + w.shape[1:])
    scale = np.maximum(np.abs(blocks).max(axis=1) / 7.0, EPS).astype(np.float32)
    q = quantize_array(blocks, scale[:, None], 0, -7, 7).reshape(padded.shape)[:k]
    return np.moveaxis(q.astype(np.int8), 0, axis), np.moveaxis(scale, 0, axis)


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, axis: int, block: int) -> np.ndarray:
    expanded = np.repeat(scale, block, axis=axis)
    index = [slice(None)] * q.ndim
    index[axis] = slice(0, q.shape[axis])
    return q.astype(np.float32) * expanded[tuple(index)]


def bias_int32(b: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 bias, float32 scale = input scale * weight scale)."""
    scale = (np.float32(input_scale) * weight_scale.astype(np.float32)).astype(np.float32)
    scale = np.maximum(scale, EPS).astype(np.float32)
    q = np.clip(np.rint(b.astype(np.float64) / scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
    return q, scale


def relative_error(w: np.ndarray, w_hat: np.ndarray) -> float:
    """||w - w'|| / ||w||: the per-layer weight quantization error reported in stats."""
    norm = float(np.linalg.norm(w))
    return float(np.linalg.norm(w - w_hat)) / norm if norm else 0.0


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)
