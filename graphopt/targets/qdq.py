"""Quantized regions: which nodes compute in int8, and which Q/DQ nodes vanish.

A runtime that understands QDQ (onnxruntime, TensorRT, TFLite converters) rewrites

    DequantizeLinear(x_q) ─┐
    DequantizeLinear(w_q) ─┴─ Conv ── QuantizeLinear   into   QLinearConv(x_q, w_q) -> y_q

so the region reads int8 activations and int8 weights (1 byte each, 0.5 for int4), does
int8 MACs and writes int8. Rules used here, per non-Q/DQ node N of a quantizable kind:

- every float input of N is the output of a DequantizeLinear from an 8/4-bit tensor
  -> N computes in int8 (int4 when all sources are 4-bit) and reads the quantized bytes;
- an output of such an N whose consumers are all QuantizeLinear is written quantized,
  and those Q nodes are absorbed;
- a MatMul/Gemm/Conv whose weight alone comes from a DQ of a constant is weight-only
  quantized: float math, weight read at its stored width;
- a DequantizeLinear of a constant, or whose consumers all read quantized, is absorbed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from graphopt.targets.shapes import ShapeTable

log = logging.getLogger(__name__)

QUANT_CAPABLE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "MaxPool",
                 "AveragePool", "GlobalAveragePool", "Relu", "Clip", "LeakyRelu", "Sigmoid",
                 "Concat", "Resize", "Softmax", "Reshape", "Transpose", "Flatten", "Squeeze",
                 "Unsqueeze", "Gather", "Split", "Slice", "Pad", "Where", "HardSwish",
                 "ArgMax", "InstanceNormalization", "LayerNormalization"}
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
ACTIVATIONS = {"Relu", "Clip", "LeakyRelu"}
LOW_BIT = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4}
FOUR_BIT = {TensorProto.INT4, TensorProto.UINT4}
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


@dataclass
class QdqPlan:
    """Per node index: element-type overrides, compute dtype, absorbed Q/DQ nodes."""

    io_types: dict[int, dict[str, int]] = field(default_factory=dict)
    dtype: dict[int, str] = field(default_factory=dict)
    fused: dict[int, str] = field(default_factory=dict)


def plan(nodes: list[onnx.NodeProto], table: ShapeTable, constants: set[str]) -> QdqPlan:
    result = QdqPlan()
    dq_src = {n.output[0]: (n.input[0], table.elem_type(n.input[0])) for n in nodes
              if n.op_type == "DequantizeLinear" and table.elem_type(n.input[0]) in LOW_BIT}
    if not dq_src:
        return result
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    reads_quantized: set[tuple[int, str]] = set()
    for i, n in enumerate(nodes):
        if n.op_type in QUANT_CAPABLE and n.domain in ("", "ai.onnx"):
            _mark_region(i, n, nodes, table, dq_src, consumers, result, reads_quantized, constants)
    _fuse_trailing_activations(nodes, consumers, table, result)
    for i, n in enumerate(nodes):
        if n.op_type == "DequantizeLinear" and n.output[0] in dq_src:
            users = consumers.get(n.output[0], [])
            if n.input[0] in constants:
                result.fused[i] = "constant weight: dequantized at load or inside the kernel"
            elif users and all((u, n.output[0]) in reads_quantized for u in users):
                result.fused[i] = f"absorbed into quantized {nodes[users[0]].op_type}"
    return result


def _mark_region(i, node, nodes, table, dq_src, consumers, result, reads_quantized, constants) -> None:
    # Float constants (bias, Clip bounds, Resize scales) do not decide the region; the
    # weight of a Conv/Gemm/MatMul and every non-constant float input do.
    weight = node.input[1] if node.op_type in WEIGHT_OPS and len(node.input) > 1 else None
    float_inputs = [x for x in node.input if x and table.elem_type(x) in FLOATS
                    and (x not in constants or x == weight)]
    if not float_inputs:
        return
    sourced = [x for x in float_inputs if x in dq_src]
    if len(sourced) == len(float_inputs):
        types = {x: dq_src[x][1] for x in sourced}
        result.io_types[i] = dict(types)
        result.dtype[i] = "int4" if all(t in FOUR_BIT for t in types.values()) else "int8"
        reads_quantized.update((i, x) for x in sourced)
        _quantized_outputs(i, node, nodes, consumers, table, result)
    elif node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in dq_src:
        # Weight-only quantization: float math, weights stay narrow in memory.
        result.io_types[i] = {node.input[1]: dq_src[node.input[1]][1]}
        reads_quantized.add((i, node.input[1]))


def _quantized_outputs(i, node, nodes, consumers, table, result) -> None:
    for out in node.output:
        users = consumers.get(out, [])
        if users and all(nodes[u].op_type == "QuantizeLinear" for u in users):
            q = nodes[users[0]]
            result.io_types[i][out] = table.elem_type(q.output[0])
            for u in users:
                result.fused[u] = f"absorbed into quantized {node.op_type}"


def _fuse_trailing_activations(nodes, consumers, table, result) -> None:
    """DQ -> X -> Relu -> Q with X in an integer region: the activation runs inside X's kernel.

    With symmetric activation ranges the Q cannot clip at zero, so the quantizer keeps the
    Relu/Clip between the node and its Q; integer runtimes (TensorRT, NPU compilers) fuse it."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    for a, act in enumerate(nodes):
        if act.op_type not in ACTIVATIONS or a in result.dtype or not act.input:
            continue
        p = producer.get(act.input[0])
        if p is None or p not in result.dtype or consumers.get(act.input[0]) != [a]:
            continue
        users = consumers.get(act.output[0], [])
        if not users or not all(nodes[u].op_type == "QuantizeLinear" for u in users):
            continue
        result.fused[a] = f"fused into quantized {nodes[p].op_type}"
        result.io_types[p][nodes[p].output[0]] = table.elem_type(nodes[users[0]].output[0])
        for u in users:
            result.fused[u] = f"absorbed into quantized {nodes[p].op_type}"
