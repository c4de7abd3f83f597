"""One table of per-op weight axes, shared by every pass that transforms weights.

Pruning, quantization (per-channel axis), low-rank splitting and N:M sparsity all need to
know, for a weight operand, which axis holds output channels and which is the reduction
axis. Applying a transform and checking it read the same table, so they cannot drift.

    Conv          W[out, in/groups, k...]        output axis 0, reduction axis 1
    ConvTranspose W[in, out/groups, k...]        output axis 1, reduction axis 0
    Gemm          B[K, N] (transB=0) / B[N, K]   output axis 1 / 0, reduction 0 / 1
    MatMul        B[..., K, N]                   output axis -1, reduction axis -2
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass(frozen=True)
class WeightAxes:
    output: int
    reduction: int


def weight_axes(op_type: str, attrs: dict | None = None, rank: int = 2) -> WeightAxes | None:
    """Output and reduction axis of the weight operand of `op_type`, or None."""
    attrs = attrs or {}
    if op_type == "Conv":
        return WeightAxes(output=0, reduction=1)
    if op_type == "ConvTranspose":
        return WeightAxes(output=1, reduction=0)
    if op_type == "Gemm":
        return WeightAxes(output=0, reduction=1) if attrs.get("transB", 0) else WeightAxes(1, 0)
    if op_type == "MatMul":
        return WeightAxes(output=rank - 1, reduction=rank - 2)
    return None
