"""Static QDQ rewriting: Q/DQ pairs on activations, quantized weights and int32 biases.

For an activation T with parameters (s, z):

    producer -> T -> QuantizeLinear(s, z) -> T_q -> DequantizeLinear(s, z) -> T_dq -> readers

(a graph output keeps its name: the producer writes T_f and the DQ writes T). A folded
ReLU/Clip disappears: its producer writes the activation's output directly and the Q,
whose zero point is qmin, does the clipping. Weights become an int8 (or int4) initializer
read through a DequantizeLinear with `axis` (per channel) or `block_size` (int4 blocks);
biases become int32 with scale s_x * s_w (see params). Nodes are emitted in order: each
Q/DQ right after the producer, each weight DQ right before its reader.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.ir.axes import weight_axes
from graphopt.ir.constants import ConstantView
from graphopt.quantization import params as qp
from graphopt.quantization.placement import Plan, node_label

log = logging.getLogger(__name__)


@dataclass
class WeightSpec:
    """How weights are stored: int8 per channel / per tensor, or int4 blocks."""

    weight_type: str = "int8"
    per_channel: bool = True
    block_size: int = 32


@dataclass
class Rewriter:
    """Collects new nodes and initializers with unique names."""

    model: onnx.ModelProto
    taken: set[str] = field(default_factory=set)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    weight_errors: dict[str, float] = field(default_factory=dict)
    cache: dict[tuple, str] = field(default_factory=dict)

    def __post_init__(self):
        g = self.model.graph
        self.taken = ({t.name for t in g.initializer} | {i.name for i in g.input}
                      | {o for n in g.node for o in n.output} | {n.name for n in g.node})

    def name(self, base: str) -> str:
        candidate, k = base, 1
        while candidate in self.taken:
            candidate, k = f"{base}_{k}", k + 1
        self.taken.add(candidate)
        return candidate

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(self, tensor: str, p: qp.QParams, source: str | None = None) -> tuple[list, str]:
        """Q and DQ nodes for `tensor` (read from `source`); returns (nodes, DQ output)."""
        scale = self.const(f"{tensor}_scale", p.scale)
        zero = self.const(f"{tensor}_zero_point", p.zero_point)
        q_out, dq_out = self.name(f"{tensor}_quantized"), self.name(f"{tensor}_dequantized")
        q = helper.make_node("QuantizeLinear", [source or tensor, scale, zero], [q_out],
                             name=self.name(f"{tensor}_QuantizeLinear"))
        dq = helper.make_node("DequantizeLinear", [q_out, scale, zero], [dq_out],
                              name=self.name(f"{tensor}_DequantizeLinear"))
        return [q, dq], dq_out

    def weight(self, name: str, w: np.ndarray, axis: int | None, spec: WeightSpec,
               reduction: int, label: str) -> tuple[list, str, np.ndarray | None]:
        """DQ node reading the quantized weight; (nodes, output, per-channel scale or None)."""
        key = (name, axis, spec.weight_type, spec.block_size)
        if spec.weight_type == "int4":
            return self._int4(name, w, reduction, spec.block_size, label, key)
        q, scale = qp.weight_int8(w, axis)
        shaped = scale if axis is None else scale.reshape([-1 if a == axis else 1 for a in range(w.ndim)])
        self.weight_errors[label] = round(qp.relative_error(w, q.astype(np.float32) * shaped), 6)
        if key in self.cache:
            return [], self.cache[key], scale
        qname = self.const(f"{name}_quantized", q)
        sname = self.const(f"{name}_scale", scale)
        zname = self.const(f"{name}_zero_point", np.zeros(scale.shape, np.int8))
        out = self.name(f"{name}_dequantized")
        attrs = {"axis": axis} if axis is not None else {}
        node = helper.make_node("DequantizeLinear", [qname, sname, zname], [out],
                                name=self.name(f"{name}_DequantizeLinear"), **attrs)
        self.cache[key] = out
        return [node], out, scale

    def _int4(self, name, w, axis, block, label, key):
        import ml_dtypes  # onnx's own dependency: the numpy dtype for packed int4

        q, scale = qp.weight_int4_blocks(w, axis, block)
        self.weight_errors[label] = round(qp.relative_error(w, qp.dequantize_blocks(q, scale, axis, block)), 6)
        if key in self.cache:
            return [], self.cache[key], None
        qname = self.const(f"{name}_quantized", q.astype(ml_dtypes.int4))
        sname = self.const(f"{name}_scale", scale)
        zname = self.const(f"{name}_zero_point", np.zeros(scale.shape, ml_dtypes.int4))
        out = self.name(f"{name}_dequantized")
        node = helper.make_node("DequantizeLinear", [qname, sname, zname], [out],
                                name=self.name(f"{name}_DequantizeLinear"), axis=axis, block_size=block)
        self.cache[key] = out
        return [node], out, None


def weight_axis(node: onnx.NodeProto, w: np.ndarray, per_channel: bool) -> tuple[int | None, int]:
    """(per-channel axis or None, reduction axis) of `node`'s weight, from the axes table."""
    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    axes = weight_axes(node.op_type, attrs, w.ndim)
    reduction = axes.reduction if axes else 0
    if not per_channel or axes is None or (node.op_type == "MatMul" and w.ndim != 2):
        return None, reduction
    return axes.output, reduction


def apply_static(model: onnx.ModelProto, plan: Plan, tensor_params: dict[str, qp.QParams],
                 spec: WeightSpec, keep_activations: bool = False) -> dict:
    """Rewrite `model` in place; returns stats (counts, per-layer weight error).

    Folded Relu/Clip nodes are removed (the Q's clipping is the activation) unless
    `keep_activations`: with symmetric ranges the Q cannot clip at 0, so the activation
    stays, between its producer and the Q that takes its range (Conv -> Relu -> Q, which
    TensorRT-style runtimes fuse)."""
    graph = model.graph
    used_before = {n for node in graph.node for n in node.input}
    rw = Rewriter(model)
    constants = ConstantView(graph)
    nodes = list(graph.node)
    outputs = {o.name for o in graph.output}
    folded = set() if keep_activations else set(plan.folds)
    folded_outputs = {nodes[a].output[0] for a in folded}
    for act in folded:
        nodes[plan.folds[act]].output[0] = nodes[act].output[0]
    after: dict[str, list] = {}
    rename: dict[str, str] = {}
    for tensor in plan.activations:
        p = tensor_params[plan.groups[tensor]]
        if tensor in outputs and any(tensor in n.output for n in nodes):
            source = rw.name(f"{tensor}_float")
            for n in nodes:
                n.output[:] = [source if o == tensor else o for o in n.output]
            new, _ = rw.qdq(tensor, p, source)
            new[1].output[0] = tensor
            after[source] = new
        else:
            new, dq_out = rw.qdq(tensor, p)
            after[tensor] = new
            rename[tensor] = dq_out
    emitted: list[onnx.NodeProto] = []
    inputs = {i.name for i in graph.input}
    for tensor in list(after):
        if tensor in inputs:
            emitted.extend(after.pop(tensor))
    counts: Counter = Counter()
    for i, node in enumerate(nodes):
        if i in folded:
            continue
        # float readers (the residual Add beside a quantized MatMul) keep the exact tensor,
        # except where a folded ReLU/Clip exists only in the Q
        node.input[:] = [rename.get(n, n) if i in plan.kinds or n in folded_outputs else n
                         for n in node.input]
        if plan.kinds.get(i) == "core":
            emitted.extend(_quantize_weights(rw, constants, node, plan, tensor_params, spec, i,
                                             {v: k for k, v in rename.items()}))
        if i in plan.kinds:
            counts[node.op_type] += 1
        emitted.append(node)
        for out in node.output:
            emitted.extend(after.pop(out, []))
    del graph.node[:]
    graph.node.extend(emitted)
    graph.initializer.extend(rw.inits)
    drop_replaced_initializers(graph, used_before)
    return {"nodes_quantized": dict(sorted(counts.items())),
            "relu_clip_folded": len(folded),
            "relu_clip_before_q": len(plan.folds) - len(folded),
            "qdq_pairs": len(plan.activations),
            "weight_error": rw.weight_errors}


def _quantize_weights(rw: Rewriter, constants: ConstantView, node, plan: Plan, tensor_params, spec,
                      index, source_of):
    """DQ nodes for the weight and (int32) bias of a core node; rewires its inputs."""
    new = []
    w = constants.get(node.input[1])
    if w is None:
        return new  # activation x activation MatMul: both operands are Q/DQ'd activations
    axis, reduction = weight_axis(node, w, spec.per_channel)
    label = node_label(node, index)
    dq, out, wscale = rw.weight(node.input[1], w, axis, spec, reduction, label)
    new.extend(dq)
    node.input[1] = out
    bias = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if bias is None or wscale is None or bias.ndim != 1:
        return new
    group = plan.groups.get(source_of.get(node.input[0], ""))
    if group is None or (wscale.size > 1 and wscale.size != bias.size):
        return new
    q, scale = qp.bias_int32(bias, float(tensor_params[group].scale), wscale)
    qname = rw.const(f"{node.input[2]}_quantized", q)
    sname = rw.const(f"{node.input[2]}_scale", scale)
    out = rw.name(f"{node.input[2]}_dequantized")
    attrs = {"axis": 0} if scale.size > 1 else {}
    new.append(helper.make_node("DequantizeLinear", [qname, sname], [out],
                                name=rw.name(f"{node.input[2]}_DequantizeLinear"), **attrs))
    node.input[2] = out
    return new


def drop_replaced_initializers(graph: onnx.GraphProto, used_before: set[str]) -> None:
    """Remove float weights no node reads any more (they were replaced by quantized ones)."""
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    remove_initializers(graph, lambda t: t.name not in used and t.name in used_before)


def remove_initializers(graph: onnx.GraphProto, drop) -> None:
    """Delete the initializers for which `drop(tensor)` holds, in place (the others keep
    their order; rebuilding the list would copy every weight, ~0.1 s on MiniLM)."""
    for i in reversed([i for i, t in enumerate(graph.initializer) if drop(t)]):
        del graph.initializer[i]
