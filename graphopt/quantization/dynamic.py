"""Dynamic and weight-only modes.

Dynamic (activations quantized at run time, ranges per batch):

    x -> DynamicQuantizeLinear -> (x_q uint8, s_x, z_x)
    y = Cast<float>(MatMulInteger(x_q, W_q, z_x, 0)) * (s_x * s_w) [+ bias]

with W_q int8 symmetric per output column (s_w a vector over N), which onnxruntime
fuses into DynamicQuantizeMatMul. Gemm (transA=0, alpha=beta=1) takes the same form with
B transposed to [K, N] when transB=1. Conv stays float (onnxruntime's ConvInteger wants
per-tensor uint8 weights and is slower than its float Conv at one thread).

Weight-only: weights stored int8 per channel, or int4 in blocks along the reduction axis
(opset 21 DequantizeLinear with block_size), read through a DequantizeLinear; the math
stays float. onnxruntime turns DQ(int4 blocks) -> MatMul into MatMulNBits.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphopt.ir.constants import ConstantView
from graphopt.quantization import params as qp
from graphopt.quantization.placement import _Graph, eligible_core, excluded, node_label
from graphopt.quantization.rewrite import (
    Rewriter,
    WeightSpec,
    drop_replaced_initializers,
    weight_axis,
)

log = logging.getLogger(__name__)


def apply_dynamic(model: onnx.ModelProto, exclude: list[str], keep_float: set[int],
                  notes: list[str]) -> dict:
    graph = model.graph
    used_before = {n for node in graph.node for n in node.input}
    g = _Graph(model)
    rw = Rewriter(model)
    quantized_inputs: dict[str, tuple[str, str, str]] = {}
    emitted, counts = [], Counter()
    for i, node in enumerate(list(graph.node)):
        reason = _dynamic_reason(g, node, i, exclude, keep_float)
        if reason:
            if node.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
                notes.append(f"{node_label(node, i)}: not quantized ({reason})")
            emitted.append(node)
            continue
        x = node.input[0]
        if x not in quantized_inputs:
            names = (rw.name(f"{x}_quantized"), rw.name(f"{x}_scale"), rw.name(f"{x}_zero_point"))
            emitted.append(helper.make_node("DynamicQuantizeLinear", [x], list(names),
                                            name=rw.name(f"{x}_DynamicQuantizeLinear")))
            quantized_inputs[x] = names
        emitted.extend(_matmul_integer(rw, g, node, i, quantized_inputs[x]))
        counts[node.op_type] += 1
    del graph.node[:]
    graph.node.extend(emitted)
    graph.initializer.extend(rw.inits)
    drop_replaced_initializers(graph, used_before)
    return {"nodes_quantized": dict(sorted(counts.items())), "weight_error": rw.weight_errors}


def _dynamic_reason(g, node, i, exclude, keep_float) -> str | None:
    if node.op_type not in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
        return "not a weight op"
    if node.op_type in ("Conv", "ConvTranspose"):
        return "Conv stays float in dynamic mode"
    if excluded(node, i, exclude) or i in keep_float:
        return "excluded"
    reason = eligible_core(g, node)
    if reason:
        return reason
    w = g.const(node.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return "weight is not a 2-D float constant"
    return None


def _matmul_integer(rw: Rewriter, g, node, index, xq) -> list:
    w = g.const(node.input[1])
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    w = w.T if trans_b else w  # MatMulInteger wants B as [K, N]
    q, scale = qp.weight_int8(w, axis=1)
    rw.weight_errors[node_label(node, index)] = round(
        qp.relative_error(w, q.astype(np.float32) * scale[None, :]), 6)
    wq = rw.const(f"{node.input[1]}_quantized", q)
    wz = rw.const(f"{node.input[1]}_zero_point", np.array(0, np.int8))
    ws = rw.const(f"{node.input[1]}_scale", scale)
    out = node.output[0]
    acc, acc_f, s, y = (rw.name(f"{out}_int32"), rw.name(f"{out}_int32_float"),
                        rw.name(f"{out}_combined_scale"), rw.name(f"{out}_unbiased"))
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
    base = node.name or out
    nodes = [helper.make_node("MatMulInteger", [xq[0], wq, xq[2], wz], [acc], name=rw.name(f"{base}_MatMulInteger")),
             helper.make_node("Cast", [acc], [acc_f], to=TensorProto.FLOAT, name=rw.name(f"{base}_Cast")),
             helper.make_node("Mul", [xq[1], ws], [s], name=rw.name(f"{base}_scale_Mul")),
             helper.make_node("Mul", [acc_f, s], [y if has_bias else out], name=rw.name(f"{base}_Mul"))]
    if has_bias:
        nodes.append(helper.make_node("Add", [y, node.input[2]], [out], name=rw.name(f"{base}_bias_Add")))
    return nodes


def apply_weight_only(model: onnx.ModelProto, spec: WeightSpec, exclude: list[str],
                      keep_float: set[int], notes: list[str]) -> dict:
    graph = model.graph
    used_before = {n for node in graph.node for n in node.input}
    constants = ConstantView(graph)
    rw = Rewriter(model)
    emitted, counts = [], Counter()
    for i, node in enumerate(list(graph.node)):
        w = constants.get(node.input[1]) if node.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose") \
            and len(node.input) > 1 else None
        if w is None or w.dtype != np.float32 or w.ndim < 2:
            emitted.append(node)
            continue
        if excluded(node, i, exclude) or i in keep_float:
            notes.append(f"{node_label(node, i)}: kept in float (excluded)")
            emitted.append(node)
            continue
        axis, reduction = weight_axis(node, w, spec.per_channel)
        dq, out, _ = rw.weight(node.input[1], w, axis, spec, reduction, node_label(node, i))
        emitted.extend(dq)
        node.input[1] = out
        emitted.append(node)
        counts[node.op_type] += 1
    del graph.node[:]
    graph.node.extend(emitted)
    graph.initializer.extend(rw.inits)
    drop_replaced_initializers(graph, used_before)
    return {"nodes_quantized": dict(sorted(counts.items())), "weight_error": rw.weight_errors}
