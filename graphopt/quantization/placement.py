"""Where Q/DQ goes: the nodes runtimes fuse into integer kernels, and nothing else.

Node kinds (onnxruntime's QDQ fusions in brackets):
  core         Conv, ConvTranspose, Gemm, MatMul: weight quantized, activations Q/DQ
               (QLinearConv, QGemm, QLinearMatMul / MatMulIntegerToFloat)
  requant      Add, Mul, AveragePool, GlobalAveragePool, Concat: own output range
               (QLinearAdd/Mul/AveragePool/GlobalAveragePool/Concat)
  shared       MaxPool, Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Resize: output
               shares the input's scale, the op just moves int8 bytes (QDQ dropping)
  Relu / Clip(min=0) after a quantized node are folded: the Q of the producer takes the
  activation's range with zero point = qmin, so clipping in Q *is* the ReLU.

MatMuls whose two operands are activations (attention's Q.K^T and P.V) are core nodes
only with `activation_matmul` (target default: false on the CPU, where they are small and
gain nothing from int8, true on GPUs/NPUs that run batched int8 MatMuls).

Selection is a greatest fixpoint: start with every eligible node, then drop requant and
shared nodes that have no quantized neighbour on their input side or no quantized
consumer (a lone Q/DQ pair only adds work), and finally drop connected groups with no
core node. Gemm/MatMul outputs get a Q only when a quantized node reads them (otherwise
onnxruntime runs MatMulIntegerToFloat / QGemm with float output, which is faster and
more accurate). Concat inputs and output share one range (one union-find group).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from graphopt.ir.constants import ConstantView
from graphopt.ir.rewrite import graph_output_names

log = logging.getLogger(__name__)

CORE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
REQUANT = {"Add", "Mul", "AveragePool", "GlobalAveragePool", "Concat"}
SHARED = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize"}
FOLDABLE = {"Relu", "Clip"}
# onnxruntime contrib ops `fuse` makes for CPU targets that have no QDQ form (float kernels)
CONTRIB_FLOAT = {"FusedConv", "FusedGemm", "FusedMatMul", "Attention", "MultiHeadAttention"}


@dataclass
class Plan:
    """The placement: node index -> kind, tensors to Q/DQ, folded activations, groups."""

    kinds: dict[int, str] = field(default_factory=dict)
    activations: list[str] = field(default_factory=list)
    folds: dict[int, int] = field(default_factory=dict)   # activation node -> producer
    groups: dict[str, str] = field(default_factory=dict)  # tensor -> group representative
    notes: list[str] = field(default_factory=list)

    def output_of(self, graph: onnx.GraphProto, index: int) -> str:
        """The tensor a quantized node's Q sits on (the folded activation's output)."""
        for act, producer in self.folds.items():
            if producer == index:
                return graph.node[act].output[0]
        return graph.node[index].output[0]


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def excluded(node: onnx.NodeProto, index: int, patterns: list[str]) -> bool:
    """A node is excluded by its name, its op type, or a regex matching its name."""
    name = node_label(node, index)
    for pattern in patterns:
        if pattern in (node.name, node.op_type, name):
            return True
        try:
            if re.fullmatch(pattern, name):
                return True
        except re.error:
            continue
    return False


class _Graph:
    """Read-only facts about one graph: producers, consumers, float tensors, constants."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.constants = ConstantView(model.graph)
        self.producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output if o}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(model.graph.node):
            for name in set(n.input):
                if name:
                    self.consumers[name].append(i)
        self.outputs = graph_output_names(model.graph)
        self.types = {v.name: v.type.tensor_type.elem_type for v in
                      list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
        for t in model.graph.initializer:
            self.types[t.name] = t.data_type

    def is_float_activation(self, name: str) -> bool:
        return bool(name) and not self.constants.may_be_constant(name) and self.types.get(name) == TensorProto.FLOAT

    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None


def eligible_core(g: _Graph, node: onnx.NodeProto) -> str | None:
    """None when a core node can be quantized, else the reason it cannot."""
    if not g.is_float_activation(node.input[0]):
        return "input is not a float activation"
    weight = node.input[1] if len(node.input) > 1 else ""
    w = g.const(weight)
    if node.op_type in ("Conv", "ConvTranspose"):
        if w is None or w.dtype != np.float32:
            return "weight is not a float constant"
    elif w is None and not g.is_float_activation(weight):
        return "second operand is neither a float constant nor a float activation"
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        if attrs.get("alpha") and attrs["alpha"].f != 1.0 or attrs.get("beta") and attrs["beta"].f != 1.0:
            return "Gemm with alpha/beta != 1"
        if attrs.get("transA") and attrs["transA"].i:
            return "Gemm with transA"
        if len(node.input) > 2 and node.input[2] and g.const(node.input[2]) is None:
            return "Gemm bias is not constant"
    return None


def _data_inputs(node: onnx.NodeProto) -> list[str]:
    if node.op_type == "Concat" or node.op_type in ("Add", "Mul"):
        return [n for n in node.input if n]
    return [node.input[0]]


def _foldable(g: _Graph, node: onnx.NodeProto) -> bool:
    """Relu, or Clip whose lower bound is exactly 0 (ReLU6 and friends)."""
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    low = g.const(node.input[1]) if len(node.input) > 1 else None
    if low is None:
        attrs = {a.name: a.f for a in node.attribute}
        return attrs.get("min") == 0.0
    return low.size == 1 and float(low.reshape(-1)[0]) == 0.0


def make_plan(model: onnx.ModelProto, exclude: list[str], keep_float: set[int],
              fold_activations: bool, activation_matmul: bool = True) -> Plan:
    """The placement; `activation_matmul=False` keeps MatMuls whose operands are both
    activations (attention's Q.K^T and P.V) in float."""
    g = _Graph(model)
    plan = Plan()
    nodes = list(model.graph.node)
    kinds: dict[int, str] = {}
    contrib = sorted({n.op_type for n in nodes if n.domain not in ("", "ai.onnx") and n.op_type in CONTRIB_FLOAT})
    if contrib:
        plan.notes.append(f"contrib nodes ({', '.join(contrib)}) have no integer kernel and stay float: run "
                          "fuse without its contrib and attention families before quantize (the fuse a "
                          "pipeline inserts for quantize does)")
    for i, node in enumerate(nodes):
        if node.domain not in ("", "ai.onnx"):
            continue
        kind = ("core" if node.op_type in CORE else "requant" if node.op_type in REQUANT
                else "shared" if node.op_type in SHARED else None)
        if kind is None:
            continue
        if excluded(node, i, exclude) or i in keep_float:
            plan.notes.append(f"{node_label(node, i)}: kept in float (excluded)")
            continue
        if kind == "core":
            reason = eligible_core(g, node)
            if reason is None and not activation_matmul and node.op_type in ("MatMul", "Gemm") \
                    and g.const(node.input[1]) is None:
                plan.notes.append(f"{node_label(node, i)}: kept in float (activation x activation "
                                  "MatMul; activation_matmul=false)")
                continue
        else:
            reason = None if all(g.is_float_activation(n) for n in _data_inputs(node)) else \
                "an input is a constant or not float"
        if reason:
            if kind == "core":
                plan.notes.append(f"{node_label(node, i)}: not quantized ({reason})")
            continue
        kinds[i] = kind
    folds = _folds(g, nodes, kinds) if fold_activations else {}
    kinds = _prune(g, nodes, kinds, folds)
    plan.kinds = kinds
    plan.folds = {a: p for a, p in folds.items() if p in kinds}
    plan.activations, plan.groups = _tensors(g, nodes, plan)
    if not kinds:
        plan.notes.append("no quantizable node (Conv/ConvTranspose/Gemm/MatMul with float inputs)")
    return plan


def _folds(g: _Graph, nodes, kinds) -> dict[int, int]:
    """Relu/Clip nodes that can be folded into the Q of their (candidate) producer."""
    folds = {}
    for i, node in enumerate(nodes):
        if not _foldable(g, node):
            continue
        p = g.producer.get(node.input[0])
        if p is None or p not in kinds or kinds[p] == "shared":
            continue
        if len(g.consumers[node.input[0]]) != 1 or node.input[0] in g.outputs:
            continue
        folds[i] = p
    return folds


def _effective_output(nodes, i, folds) -> str:
    for act, producer in folds.items():
        if producer == i:
            return nodes[act].output[0]
    return nodes[i].output[0]


def _prune(g: _Graph, nodes, kinds: dict[int, str], folds) -> dict[int, str]:
    kinds = dict(kinds)
    changed = True
    while changed:
        changed = False
        for i in [i for i, k in kinds.items() if k != "core"]:
            node = nodes[i]
            out = _effective_output(nodes, i, folds)
            feeds_quantized = any(c in kinds and c != i for c in g.consumers[out])
            input_side = any(folds.get(g.producer.get(n), g.producer.get(n)) in kinds or any(c in kinds and c != i for c in g.consumers[n])
                             for n in _data_inputs(node))
            if not feeds_quantized or not input_side:
                del kinds[i]
                changed = True
    return _drop_groups_without_core(g, nodes, kinds, folds)


def _drop_groups_without_core(g, nodes, kinds, folds) -> dict[int, str]:
    parent = {i: i for i in kinds}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in kinds:
        out = _effective_output(nodes, i, folds)
        for c in g.consumers[out]:
            if c in kinds:
                parent[find(c)] = find(i)
    has_core = {find(i) for i, k in kinds.items() if k == "core"}
    return {i: k for i, k in kinds.items() if find(i) in has_core}


def _tensors(g: _Graph, nodes, plan: Plan) -> tuple[list[str], dict[str, str]]:
    """Activation tensors to Q/DQ, and the union-find groups that share a scale."""
    wanted: list[str] = []
    parent: dict[str, str] = {}

    def add(name):
        if name not in parent:
            parent[name] = name
            wanted.append(name)

    def find(name):
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for i, kind in sorted(plan.kinds.items()):
        node = nodes[i]
        ins = [n for n in (_data_inputs(node) if kind != "core" else node.input[:2])
               if g.is_float_activation(n)]
        for name in ins:
            add(name)
        out = _effective_output(nodes, i, plan.folds)
        readers_quantized = any(c in plan.kinds for c in g.consumers[out])
        if node.op_type in ("Gemm", "MatMul") and not readers_quantized and i not in plan.folds.values():
            continue  # float output: MatMulIntegerToFloat / QGemm-to-float
        add(out)
        if kind == "shared" or node.op_type == "Concat":
            for name in ins:
                parent[find(name)] = find(out)
    return wanted, {name: find(name) for name in wanted}
