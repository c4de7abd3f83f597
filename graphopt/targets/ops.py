"""Per-node work: MACs, FLOPs and the bytes a node reads and writes.

With Y the output, W the weight and numel() the element count (all shapes concrete,
see shapes.py):

    Conv           MACs = numel(Y) * prod(W.shape[1:])        W = [M, C/g, k...]; any g
    ConvTranspose  MACs = numel(X) * prod(W.shape[1:])        W = [C, M/g, k...]
    Gemm           MACs = numel(Y) * K                        K = A.shape[0 if transA else 1]
    MatMul         MACs = numel(Y) * K                        K = A.shape[-1]; batch broadcast in Y
    Einsum         MACs = prod(size of every distinct index letter)
    LSTM/GRU/RNN   MACs = seq * batch * (numel(W) + numel(R)) (gates x directions in W, R)
    Attention      MACs = 2 * numel(Q) * S_kv                 QK^T and PV
    FLOPs = 2 * MACs (+ numel(Y) when a bias is added).

Ops without MACs count FLOPs per output element (pooling: per kernel tap; softmax ~5,
layer/instance norm ~8, batch norm 2, transcendental activations ~4, resize: 2^d taps for
linear, 4^d for cubic). Bytes are element counts times the element size of each input
and output; views (Reshape, Flatten, Squeeze, Unsqueeze, Identity) alias their input
and move nothing. Quantized (QDQ) regions are priced by qdq.py, which tells this module
which inputs are read quantized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphopt.targets.shapes import ShapeTable

log = logging.getLogger(__name__)

VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
SHAPE_OPS = {"Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero"}
BYTES_ONLY = {"Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND",
              "Pad", "Tile", "Expand", "DepthToSpace", "SpaceToDepth", "Cast", "ScatterND",
              "ScatterElements", "Compress", "ReverseSequence", "TopK", "ArgMax", "ArgMin",
              "OneHot", "Trilu", "CastLike", "If", "Loop", "Scan"}
ELEMENTWISE = {  # FLOPs per output element
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Relu": 1, "LeakyRelu": 2, "PRelu": 2, "Clip": 1,
    "Abs": 1, "Neg": 1, "Max": 1, "Min": 1, "Sum": 1, "Mean": 1, "Where": 1, "Not": 1,
    "Equal": 1, "Less": 1, "Greater": 1, "LessOrEqual": 1, "GreaterOrEqual": 1, "And": 1,
    "Or": 1, "Xor": 1, "Sign": 1, "Floor": 1, "Ceil": 1, "Round": 1, "Reciprocal": 1,
    "Sqrt": 2, "Pow": 4, "Exp": 4, "Log": 4, "Erf": 4, "Sigmoid": 4, "Tanh": 4, "Softplus": 4,
    "Softsign": 2, "Elu": 4, "Selu": 4, "Celu": 4, "HardSigmoid": 2, "HardSwish": 3,
    "Gelu": 8, "Mish": 8, "Sin": 4, "Cos": 4, "IsNaN": 1, "IsInf": 1, "Mod": 2,
    "BitShift": 1, "ThresholdedRelu": 1, "Shrink": 1,
    "QuantizeLinear": 2, "DequantizeLinear": 2, "DynamicQuantizeLinear": 4,
}
NORMS = {"BatchNormalization": 2, "LayerNormalization": 8, "InstanceNormalization": 8,
         "GroupNormalization": 8, "SimplifiedLayerNormalization": 6, "LpNormalization": 3,
         "MeanVarianceNormalization": 8, "LRN": 13, "Softmax": 5, "LogSoftmax": 6, "Hardmax": 2}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "CumSum",
          "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
POOL = {"MaxPool", "AveragePool", "LpPool"}
DTYPE_NAMES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
               TensorProto.INT8: "int8", TensorProto.UINT8: "int8", TensorProto.INT4: "int4",
               TensorProto.UINT4: "int4", TensorProto.DOUBLE: "fp64", TensorProto.INT32: "int32",
               TensorProto.INT64: "int64", TensorProto.BOOL: "bool"}


def element_bytes(elem_type: int) -> float:
    """Bytes per element; 4-bit types pack two per byte."""
    if elem_type in (TensorProto.INT4, TensorProto.UINT4):
        return 0.5
    if elem_type == TensorProto.STRING:
        return 8.0
    return float(helper.tensor_dtype_to_np_dtype(elem_type).itemsize)


def dtype_name(elem_type: int) -> str:
    return DTYPE_NAMES.get(elem_type, "other")


@dataclass
class NodeWork:
    """What one node does, before a target prices it."""

    name: str
    op_type: str
    domain: str
    macs: int = 0
    flops: int = 0
    read_bytes: float = 0.0            # activations read
    weight_bytes: float = 0.0          # constant operands read
    write_bytes: float = 0.0
    dtype: str = "fp32"
    kind: str = "other"                # efficiency class, see schema.EFFICIENCY_CLASSES
    known: bool = True                 # False: op not modelled, bytes only
    fused: str = ""                    # non-empty: absorbed into a neighbour (why)
    sparse_weight: bool = False
    notes: list[str] = field(default_factory=list)


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def analyze(node: onnx.NodeProto, table: ShapeTable, constants: set[str],
            io_types: dict[str, int] | None = None) -> NodeWork:
    """Work of `node`; `io_types` overrides an input's or output's element type (QDQ)."""
    io_types = io_types or {}
    work = NodeWork(node.name or node.output[0], node.op_type, node.domain)
    _count_bytes(work, node, table, constants, io_types)
    _count_ops(work, node, table)
    unknown = [o for o in node.output if o and not table.known(o)]
    if unknown and node.op_type not in VIEW_OPS:
        work.notes.append(f"shape of {unknown[0]} unknown: MACs and bytes undercounted")
    return work


def _count_bytes(work, node, table, constants, io_types) -> None:
    if node.op_type in VIEW_OPS:
        return
    for name in node.input:
        if not name:
            continue
        size = table.numel(name) * element_bytes(io_types.get(name, table.elem_type(name)))
        if name in constants:
            work.weight_bytes += size
        else:
            work.read_bytes += size
    for name in node.output:
        if name:
            work.write_bytes += table.numel(name) * element_bytes(io_types.get(name, table.elem_type(name)))
    main = node.input[0] if node.input and node.input[0] else (node.output[0] if node.output else "")
    work.dtype = dtype_name(io_types.get(main, table.elem_type(main)))


def _count_ops(work: NodeWork, node, table: ShapeTable) -> None:
    op = node.op_type
    handler = _HANDLERS.get(op)
    if handler is not None and node.domain in ("", "ai.onnx", "com.microsoft"):
        handler(work, node, table)
        work.flops = max(work.flops, 2 * work.macs)
    elif op in ELEMENTWISE:
        work.flops = ELEMENTWISE[op] * _out_numel(node, table)
        work.kind = "elementwise"
    elif op in NORMS:
        work.flops = NORMS[op] * _out_numel(node, table)
        work.kind = "elementwise" if op == "BatchNormalization" else "reduce"
    elif op in REDUCE:
        work.flops = table.numel(node.input[0])
        work.kind = "reduce"
    elif op in POOL:
        work.flops = _out_numel(node, table) * int(np.prod(attr(node, "kernel_shape", [1])))
        work.kind = "reduce"
    elif op in VIEW_OPS or op in SHAPE_OPS or op in BYTES_ONLY:
        work.kind = "other"
    else:
        work.known = False
        work.notes.append(f"{node.domain + '.' if node.domain else ''}{op} not modelled: bytes only")


def _out_numel(node, table: ShapeTable) -> int:
    return table.numel(node.output[0]) if node.output else 0


def _conv(work, node, table, w_index=1, b_index=2):
    w = table.shape(node.input[w_index])
    if w is None:
        work.notes.append("weight shape unknown: MACs not counted")
        return
    work.macs = _out_numel(node, table) * int(np.prod(w[1:]))
    group = int(attr(node, "group", 1))
    y = table.shape(node.output[0]) or ()
    rows = int(np.prod(y[2:])) if len(y) > 2 else 1
    if group > 1 and w[1] == 1:
        work.kind = "depthwise_conv"
    elif rows < 16:
        # im2col GEMM with fewer rows than one register tile: packing, not math, dominates.
        work.kind = "small_matmul"
    else:
        work.kind = "conv"
    bias = len(node.input) > b_index and node.input[b_index]
    work.flops = 2 * work.macs + (_out_numel(node, table) if bias else 0)


def _qlinear_conv(work, node, table):
    _conv(work, node, table, w_index=3, b_index=8)


def _conv_transpose(work, node, table):
    w = table.shape(node.input[1])
    if w is None:
        return
    work.macs = table.numel(node.input[0]) * int(np.prod(w[1:]))
    work.kind = "conv_transpose"


def _gemm(work, node, table):
    a = table.shape(node.input[0])
    if a is None:
        return
    k = a[0] if attr(node, "transA", 0) else a[-1]
    work.macs = _out_numel(node, table) * int(k)
    _matmul_kind(work, node, table)
    if len(node.input) > 2 and node.input[2]:
        work.flops = 2 * work.macs + _out_numel(node, table)


def _matmul(work, node, table, a_index=0):
    a = table.shape(node.input[a_index])
    if a is None or not a:
        return
    work.macs = _out_numel(node, table) * int(a[-1])
    _matmul_kind(work, node, table)


def _matmul_kind(work, node, table):
    # Small products spend their time packing and dispatching, not multiplying.
    work.kind = "matmul" if work.macs >= 100_000 else "small_matmul"


def _einsum(work, node, table):
    equation = attr(node, "equation", b"")
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    sizes = {}
    for term, name in zip(lhs, node.input):
        shape = table.shape(name)
        if shape is None or "..." in term:
            work.notes.append("Einsum with ellipsis or unknown shape: MACs not counted")
            return
        sizes.update({letter: dim for letter, dim in zip(term, shape)})
    work.macs = int(np.prod(list(sizes.values()), dtype=np.int64)) if len(lhs) > 1 else 0
    _matmul_kind(work, node, table)


def _rnn(work, node, table):
    x, w, r = (table.shape(node.input[i]) for i in range(3))
    if x is None or w is None or r is None:
        return
    layout = int(attr(node, "layout", 0))
    seq, batch = (x[1], x[0]) if layout else (x[0], x[1])
    work.macs = seq * batch * (int(np.prod(w)) + int(np.prod(r)))
    work.kind = "matmul" if work.macs >= 100_000 else "small_matmul"
    work.flops = 2 * work.macs + 10 * seq * batch * int(r[0] * r[-1])


def _attention(work, node, table):
    q, k = table.shape(node.input[0]), table.shape(node.input[1])
    if q is None or k is None:
        return
    work.macs = 2 * table.numel(node.input[0]) * int(k[-2])
    work.kind = "matmul"


def _resize(work, node, table):
    mode = attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    x, y = table.shape(node.input[0]), table.shape(node.output[0])
    resized = sum(1 for a, b in zip(x or (), y or ()) if a != b)
    taps = {"linear": 2, "cubic": 4}.get(mode, 1) ** resized
    work.flops = 2 * taps * _out_numel(node, table)
    work.kind = "other"


_HANDLERS = {
    "Conv": _conv, "ConvInteger": _conv, "QLinearConv": _qlinear_conv,
    "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul,
    "MatMulInteger": _matmul, "QLinearMatMul": _matmul, "FusedMatMul": _matmul,
    "Einsum": _einsum, "LSTM": _rnn, "GRU": _rnn, "RNN": _rnn, "Attention": _attention,
    "Resize": _resize, "Upsample": _resize,
}

