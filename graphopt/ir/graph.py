"""Round trip between onnx.ModelProto and onnx-graphsurgeon graphs.

graphsurgeon drops model-level fields (metadata, producer, doc string, functions) and
reorders nothing else of interest; `to_model` restores those fields from the original.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def to_model(graph: gs.Graph, like: onnx.ModelProto, cleanup: bool = True) -> onnx.ModelProto:
    """Export `graph` as a model carrying `like`'s opsets, IR version and metadata."""
    if cleanup:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = like.ir_version
    del out.opset_import[:]
    out.opset_import.extend(like.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(like, field))
    del out.metadata_props[:]
    out.metadata_props.extend(like.metadata_props)
    del out.functions[:]
    out.functions.extend(like.functions)
    _keep_initializer_inputs(out, like)
    return out


def _keep_initializer_inputs(out: onnx.ModelProto, like: onnx.ModelProto) -> None:
    """Graph inputs that also have initializers (overridable, IR<4 style) stay inputs."""
    kept = {i.name for i in out.graph.input}
    inits = {i.name for i in out.graph.initializer}
    for value in like.graph.input:
        if value.name not in kept and value.name in inits:
            out.graph.input.append(value)


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for entry in model.opset_import:
        if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
            return entry.version
    return 0


def constant_value(tensor):
    """Value of a graphsurgeon tensor when it is a Constant (initializer or Constant node)."""
    import numpy as np

    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        if "value" in attrs:
            value = attrs["value"]
            return np.asarray(value.values if isinstance(value, gs.Constant) else value)
        for key, convert in (("value_float", np.float32), ("value_int", np.int64),
                             ("value_floats", np.float32), ("value_ints", np.int64)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=convert)
    return None


def single_consumer(tensor) -> bool:
    return len(tensor.outputs) == 1


def is_graph_output(graph: gs.Graph, tensor) -> bool:
    return any(out is tensor or out.name == tensor.name for out in graph.outputs)


def conform_to_ir_version(model: onnx.ModelProto) -> None:
    """IR < 4 requires every initializer to be a graph input; add the missing ones."""
    if model.ir_version >= 4:
        return
    from onnx import helper

    listed = {i.name for i in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.name not in listed:
            model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))


def declared_value_info(model: onnx.ModelProto) -> set[str]:
    """Names the model declares in value_info (main graph and subgraphs)."""
    from graphopt.ir.subgraphs import iter_graphs

    return {v.name for g in iter_graphs(model.graph) for v in g.value_info}


def keep_declared_value_info(model: onnx.ModelProto, declared: set[str]) -> None:
    """Drop value_info entries a pass inferred; keep those the input declared.

    Inferred shapes are an analysis, not part of the result: declared intermediate shapes
    change what onnxruntime fuses (with them it fuses residual Add + LayerNormalization into
    SkipLayerNormalization, ~4x slower than the two ops at one thread on x86: all-MiniLM-L6-v2
    runs 5-7% slower), and they go stale where later passes rename tensors."""
    from graphopt.ir.subgraphs import iter_graphs

    for g in iter_graphs(model.graph):
        kept = [v for v in g.value_info if v.name in declared]
        if len(kept) != len(g.value_info):
            del g.value_info[:]
            g.value_info.extend(kept)


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without its initializers (nodes, inputs, outputs, value_info, opsets,
    functions): the start of light copies that stand weights in by stubs or arrays."""
    light = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, name, getattr(model, name))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph, lg = model.graph, light.graph
    lg.name = graph.name
    lg.node.extend(graph.node)
    lg.input.extend(graph.input)
    lg.output.extend(graph.output)
    lg.value_info.extend(graph.value_info)
    lg.sparse_initializer.extend(graph.sparse_initializer)
    return light
