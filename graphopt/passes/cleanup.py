"""`cleanup`: shape inference, constant folding, Identity/Dropout removal, dead code.

All rewrites are exact:
- A node whose inputs are all compile-time constants is evaluated once (onnx reference
  evaluator) and replaced by an initializer, unless the result is much bigger than the
  constants it consumes (a ConstantOfShape that generates a weight stays a generator, so
  the file does not bloat) or the op is non-deterministic or a DequantizeLinear (folding it
  would undo quantization).
- `Shape` of a tensor whose shape inference found fully static is that shape.
- Identity, and Dropout in inference mode, forward their input.
- `Constant` nodes become initializers (same value, same name).
- Nodes no graph output depends on are removed, with their initializers.
Subgraphs of If/Loop/Scan are left as they are, except that names they read from the
enclosing scope are kept alive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.ir import (ConstantView, constant_node_value, declared_value_info, infer_shapes,
                         keep_declared_value_info)
from graphopt.ir.graph import conform_to_ir_version
from graphopt.ir.subgraphs import outer_scope_names
from graphopt.ir.rewrite import (consumers, graph_output_names, producers, remove_dead_nodes,
                                 rename_input_uses)
from graphopt.passes import Pass, PassContext, PassResult, option, register_pass

log = logging.getLogger(__name__)

NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                "Multinomial", "Bernoulli", "DequantizeLinear", "If", "Loop", "Scan",
                "SequenceConstruct", "SequenceEmpty", "Optional"}
FOLD_GROWTH_BYTES = 64


@register_pass
class Cleanup(Pass):
    name = "cleanup"
    summary = "shape inference, constant folding, Identity/Dropout removal and dead-code elimination"
    lossless = True

    @dataclass
    class Options:
        fold_constants: bool = option(True, "evaluate nodes whose inputs are all constants")
        max_fold_growth: int = option(FOLD_GROWTH_BYTES,
                                      "bytes a folded constant may exceed the constants it replaces by", low=0)
        infer_shapes: bool = option(True, "run ONNX shape inference (folds shapes it proves static)")
        keep_inferred_shapes: bool = option(False, "write the inferred intermediate shapes into the output "
                                            "(off: declared shapes make onnxruntime fuse Add+LayerNorm into a "
                                            "slower SkipLayerNormalization on x86 CPUs)")

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        stats = {"identities_removed": 0, "constants_to_initializers": 0, "constants_folded": 0, "shapes_folded": 0, "dead_nodes_removed": 0}
        notes: list[str] = []
        nodes_before = len(model.graph.node)
        before = model.SerializeToString(deterministic=True)
        declared = declared_value_info(model)
        for _ in range(8):  # folding exposes more folding; a few rounds reach the fixpoint
            round_changes = stats["constants_folded"] + stats["shapes_folded"] + stats["identities_removed"]
            stats["identities_removed"] += remove_identities(model.graph)
            stats["constants_to_initializers"] += constants_to_initializers(model.graph)
            if self.options.infer_shapes:
                model = _with_shapes(model, notes)
            stats["shapes_folded"] += fold_static_shapes(model.graph)
            if self.options.fold_constants:
                stats["constants_folded"] += fold_constants(model, self.options.max_fold_growth, notes)
            stats["dead_nodes_removed"] += remove_dead_nodes(model.graph)
            if stats["constants_folded"] + stats["shapes_folded"] + stats["identities_removed"] == round_changes:
                break
        conform_to_ir_version(model)
        if not self.options.keep_inferred_shapes:
            keep_declared_value_info(model, declared)
        changed = model.SerializeToString(deterministic=True) != before
        stats["nodes_removed"] = nodes_before - len(model.graph.node)
        return PassResult(model, changed, stats, sorted(set(notes)))


def _with_shapes(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    try:
        return infer_shapes(model)
    except Exception as err:  # shape inference failing is not fatal for cleanup
        notes.append(f"shape inference failed, shapes not refreshed: {str(err).splitlines()[0][:200]}")
        return model


def remove_identities(graph: onnx.GraphProto) -> int:
    """Bypass Identity and inference-mode Dropout nodes; returns how many were removed."""
    removed = 0
    outputs = graph_output_names(graph)
    inputs = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    read = set(consumers(graph)) | outer_scope_names(graph) | outputs
    for node in list(graph.node):
        if not _is_forwarding(node, read):
            continue
        src, dst = node.input[0], node.output[0]
        if dst in outputs:
            made = producers(graph)
            if src in inputs or src in outputs or src not in made or len(consumers(graph)[src]) > 1:
                continue  # the graph output name must survive; nothing to hand it to
            producer = made[src]
            producer.output[list(producer.output).index(src)] = dst
            rename_input_uses(graph, src, dst)
        else:
            rename_input_uses(graph, dst, src)
        graph.node.remove(node)
        removed += 1
    return removed


def constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Move `Constant` node values into initializers (graph outputs keep their node)."""
    outputs = graph_output_names(graph)
    moved = 0
    for node in list(graph.node):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        if any(a.name in ("sparse_value", "value_string", "value_strings") for a in node.attribute):
            continue
        value = constant_node_value(node)
        if value is None:
            continue
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), node.output[0]))
        graph.node.remove(node)
        moved += 1
    return moved


def _is_forwarding(node: onnx.NodeProto, read: set[str]) -> bool:
    if node.domain not in ("", "ai.onnx") or not node.input or not node.input[0]:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type == "Dropout":
        extra_outputs = [o for o in node.output[1:] if o in read]  # an unread mask output may go
        training = len(node.input) > 2 and node.input[2]
        return not extra_outputs and not training
    return False


def fold_static_shapes(graph: onnx.GraphProto) -> int:
    """Replace Shape(x) by a constant where x's shape is fully known."""
    shapes = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else None
        if dims is not None and value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    folded = 0
    for node in list(graph.node):
        if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or node.input[0] not in shapes:
            continue
        dims = shapes[node.input[0]]
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(dims))
        value = np.array(dims[slice(start, end)], dtype=np.int64)
        _replace_with_constant(graph, node, [value])
        folded += 1
    return folded


def fold_constants(model: onnx.ModelProto, max_growth: int, notes: list[str]) -> int:
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    folded = 0
    opsets = list(model.opset_import)
    view = ConstantView(graph)
    for node in list(graph.node):
        if node.op_type == "Constant" or not _foldable(node):
            continue
        if not all(_cheaply_constant(graph, view, name) for name in node.input if name):
            continue
        values = [view.get(name) if name else None for name in node.input]
        if any(v is None for v, name in zip(values, node.input) if name):
            continue
        try:
            results = _evaluate(ReferenceEvaluator, node, values, opsets)
        except Exception as err:  # an op the reference evaluator lacks: leave it
            notes.append(f"not folded {node.op_type} {node.name!r}: {type(err).__name__}")
            continue
        in_bytes = sum(v.nbytes for v in values if v is not None)
        out_bytes = sum(np.asarray(r).nbytes for r in results)
        if out_bytes > in_bytes + max_growth:
            continue  # folding would bloat the file
        _replace_with_constant(graph, node, results)
        view = ConstantView(graph)
        folded += 1
    return folded


def _cheaply_constant(graph, view: ConstantView, name: str) -> bool:
    """Whether `name` can be constant, without materializing any tensor."""
    return view.may_be_constant(name)


def _foldable(node: onnx.NodeProto) -> bool:
    return (node.domain in ("", "ai.onnx") and node.op_type not in NOT_FOLDABLE
            and all(a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute))


def _evaluate(evaluator_cls, node, values, opsets):
    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    del clone.input[:]
    clone.input.extend(names)
    outs = [f"out{i}" for i in range(len(node.output))]
    del clone.output[:]
    clone.output.extend(outs)
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in names if n]
    graph = onnx.helper.make_graph([clone], "fold", inputs,
                                   [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs])
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    feeds = {n: v for n, v in zip(names, values) if n}
    return evaluator_cls(model).run(None, feeds)


def _replace_with_constant(graph: onnx.GraphProto, node: onnx.NodeProto, values) -> None:
    """Turn `node` into initializers holding `values` (names kept, so readers are untouched)."""
    outputs = graph_output_names(graph)
    index = list(graph.node).index(node)
    graph.node.remove(node)
    for pos, (name, value) in enumerate(zip(node.output, values)):
        if not name:
            continue
        tensor = numpy_helper.from_array(np.asarray(value), name)
        if name in outputs:
            # graph outputs cannot be initializers in every runtime: keep a Constant node
            const = onnx.helper.make_node("Constant", [], [name], value=tensor, name=f"{node.name or name}_const")
            graph.node.insert(index, const)
            continue
        graph.initializer.append(tensor)
