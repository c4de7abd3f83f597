"""The view of one graph that fusion rules read and rewrite.

A rule sees a `FusionGraph`: who produces and who consumes each tensor (subgraph reads
included), which tensors are compile-time constants, the static shapes and dtypes shape
inference found, and the opset. Indexes are rebuilt lazily after each rewrite, so a rule
always sees the graph as it is now.

Rewrites keep tensor names where they can: a fused node writes the name of the last node
it replaces, so readers, graph outputs and value_info stay valid and nothing needs a
tensor map. New initializers and nodes get names derived from the nodes they replace.

A new constant that is large and uniform (every element equal, e.g. a weight that was
itself a `ConstantOfShape` generator) is written as `ConstantOfShape` again, so folding
never turns a 9 KB generator model into a 500 MB file.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.ir import ConstantView
from graphopt.ir.rewrite import consumers, graph_output_names, producers, rename_input_uses

log = logging.getLogger(__name__)

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}
UNIFORM_MIN_ELEMENTS = 16  # below this an initializer is as small as a generator


class FusionGraph:
    """Indexes over `graph` plus the small mutations rules are built from."""

    def __init__(self, graph: onnx.GraphProto, opset: int, target=None, upgrade_opset: bool = False,
                 ir_version: int = 8):
        self.graph = graph
        self.ir_version = ir_version
        self.opset = opset
        self.target = target
        self.upgrade_opset = upgrade_opset
        self.needed_opset = 0  # highest opset a rewrite relied on (upgrade_opset)
        self.used_domains: set[str] = set()  # contrib domains new nodes live in
        self._names: set[str] = set()
        self.memo: dict = {}  # kept across refreshes: only for values keyed by object identity
        self.refresh()

    # ------------------------------------------------------------------ indexes
    def refresh(self) -> None:
        self.prod = producers(self.graph)
        self.cons = consumers(self.graph)
        self.const = ConstantView(self.graph, initializer_inputs_constant=self.ir_version < 4)
        self.outputs = graph_output_names(self.graph)
        self.inputs = {i.name for i in self.graph.input}
        self.alive = {id(n) for n in self.graph.node}
        self.cache: dict = {}  # per-index memo for rules (e.g. CSE keys); cleared with the indexes
        self._names = ({o for n in self.graph.node for o in n.output} | self.inputs
                       | {t.name for t in self.graph.initializer} | {n.name for n in self.graph.node}
                       | {v.name for v in self.graph.value_info})  # a stale value_info must not type a new name
        if not hasattr(self, "_shapes"):
            # value_info is only read, never edited by rules, so its types are decoded once
            self._shapes, self._dtypes, self._symbolic = {}, {}, {}
            for value in list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output):
                self._record_type(value)
        for tensor in self.graph.initializer:
            self._shapes[tensor.name] = tuple(tensor.dims)
            self._dtypes[tensor.name] = tensor.data_type

    def _record_type(self, value: onnx.ValueInfoProto) -> None:
        if not value.type.HasField("tensor_type"):
            return
        ttype = value.type.tensor_type
        if ttype.elem_type:
            self._dtypes[value.name] = ttype.elem_type
        if ttype.HasField("shape"):
            self._shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                             for d in ttype.shape.dim)
            self._symbolic[value.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                               for d in ttype.shape.dim)

    # ------------------------------------------------------------------ queries
    def value(self, name: str) -> np.ndarray | None:
        """Compile-time value of `name`, or None (empty name: None)."""
        if not name:
            return None
        value = self.const.get(name)
        return value if value is not None else self._unsqueezed(name)

    def _unsqueezed(self, name: str) -> np.ndarray | None:
        """Unsqueeze of a small constant (exporters wrap per-channel scales that way)."""
        node = self.producer(name, "Unsqueeze")
        if node is None or not self.const.may_be_constant(node.input[0]):
            return None
        data = self.const.get(node.input[0])
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1:
            axes = self.const.get(node.input[1])
        if data is None or axes is None or data.size > 1 << 16:
            return None
        rank = data.ndim + len(np.asarray(axes).reshape(-1))
        return np.expand_dims(data, tuple(sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))))

    def is_const(self, name: str) -> bool:
        if not name:
            return False
        if self.const.may_be_constant(name) and self.const.get(name) is not None:
            return True
        return self._unsqueezed(name) is not None

    def shape(self, name: str) -> tuple | None:
        """Static shape (None for unknown dims) when known, else None."""
        if name in self._shapes:
            return self._shapes[name]
        value = self.const.get(name) if self.const.may_be_constant(name) else None
        return None if value is None else tuple(value.shape)

    def symbolic_shape(self, name: str) -> tuple | None:
        """Shape with dim_params (str) where shape inference named a dynamic dim, None where unknown."""
        return self._symbolic.get(name) or self.shape(name)

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def dtype(self, name: str) -> int | None:
        if name in self._dtypes:
            return self._dtypes[name]
        value = self.const.get(name) if self.const.may_be_constant(name) else None
        if value is None:
            return None
        return onnx.helper.np_dtype_to_tensor_dtype(value.dtype)

    def is_float(self, name: str) -> bool:
        return self.dtype(name) in FLOAT_TYPES

    def producer(self, name: str, op_type: str | None = None) -> onnx.NodeProto | None:
        node = self.prod.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        return node if op_type is None or node.op_type == op_type else None

    def users(self, name: str) -> list[onnx.NodeProto]:
        return self.cons.get(name, [])

    def only_user(self, name: str) -> onnx.NodeProto | None:
        """The single reader of `name` when it has one and is not a graph output."""
        users = self.users(name)
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]

    def private(self, name: str) -> bool:
        """`name` is read by exactly one node and is not a graph output (safe to consume)."""
        return self.only_user(name) is not None

    def supports(self, op_type: str, domain: str = "") -> bool:
        """Whether the target (when one is selected) can run `op_type`."""
        if self.target is None or not hasattr(self.target, "supports_op"):
            return True
        return self.target.supports_op(op_type, domain)

    def opset_allows(self, version: int) -> bool:
        """The model's opset has ops of `version`, or the user allowed upgrading to it."""
        return self.opset >= version or (self.upgrade_opset and version <= 23)

    # ------------------------------------------------------------------ mutations
    def fresh(self, base: str) -> str:
        """A tensor/node name derived from `base` that is not used in this graph."""
        base = base or "fused"
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def add_constant(self, value: np.ndarray, base: str, before: onnx.NodeProto | None = None) -> str:
        """Store `value` under a fresh name; a large uniform value becomes a ConstantOfShape."""
        value = np.asarray(value)
        name = self.fresh(base)
        if value.size >= UNIFORM_MIN_ELEMENTS and np.all(value.reshape(-1) == value.reshape(-1)[0]):
            shape_name = self.fresh(f"{base}_shape")
            self.graph.initializer.append(numpy_helper.from_array(np.array(value.shape, np.int64), shape_name))
            fill = numpy_helper.from_array(value.reshape(-1)[:1].copy())
            node = onnx.helper.make_node("ConstantOfShape", [shape_name], [name], value=fill,
                                         name=self.fresh(f"{base}_gen"))
            self.insert_before(node, before)
        else:
            self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def insert_before(self, node: onnx.NodeProto, anchor: onnx.NodeProto | None) -> None:
        if anchor is None:
            self.graph.node.insert(0, node)
            return
        index = next(i for i, n in enumerate(self.graph.node) if n is anchor)
        self.graph.node.insert(index, node)

    def make_node(self, op_type: str, inputs: list[str], outputs: list[str], rule: str,
                  base: str, domain: str = "", **attrs) -> onnx.NodeProto:
        """A new node named after `base`, tagged with the rule that made it."""
        node = onnx.helper.make_node(op_type, inputs, outputs, name=self.fresh(base), domain=domain or None,
                                     **attrs)
        node.doc_string = f"graphopt fuse: {rule}"
        return node

    def remove(self, *nodes: onnx.NodeProto) -> None:
        for node in nodes:
            for i, existing in enumerate(self.graph.node):
                if existing is node:
                    del self.graph.node[i]
                    break

    def bypass_reason(self, node: onnx.NodeProto, src: str) -> str | None:
        """Why `node` cannot be removed in favour of `src` (see `bypass`), or None."""
        dst = node.output[0]
        if dst not in self.outputs:
            return None
        if (self.prod.get(src) is None or src in self.outputs or src in self.inputs
                or len(self.users(src)) != 1):
            return "its output is a graph output and its input cannot take the name"
        return None

    def bypass(self, node: onnx.NodeProto, src: str) -> str | None:
        """Remove `node` (one output) whose output equals tensor `src`; readers read `src`.

        When the output is a graph output its name must survive: the producer of `src`
        is renamed to write it instead, if `src` is private to `node`.
        """
        dst = node.output[0]
        if dst in self.outputs:
            producer = self.prod.get(src)
            if (producer is None or src in self.outputs or src in self.inputs
                    or len(self.users(src)) != 1):
                return "its output is a graph output and its input cannot take the name"
            self.remove(node)
            producer.output[list(producer.output).index(src)] = dst
            rename_input_uses(self.graph, src, dst)
            return None
        self.remove(node)
        rename_input_uses(self.graph, dst, src)
        return None


def attr(node: onnx.NodeProto, name: str, default=None):
    """Attribute value of `node` (ints/floats/strings/tensors decoded), or `default`."""
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def is_standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def scalar(value: np.ndarray | None) -> float | None:
    """The one value of a constant with a single element (any rank), else None."""
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])
