"""Pre-flight validation of an input model, before any pass touches it.

Refused with one clear line (InputError): opsets outside the supported range, operators of
domains the model does not import, duplicate tensor names, names read but never defined,
cycles, tensors whose declared size disagrees with their data or would exhaust memory, and
models onnxruntime cannot load. Reported as warnings: NaN/Inf weights, custom domains.
`check_level` finds the strictest checker level the input passes, so a pass is held to the
standard its input met, not a stricter one.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx


from graphopt.errors import InputError
from graphopt.ir.rewrite import topological_order
from graphopt.ir.subgraphs import iter_graphs
from graphopt.ir.tensorsize import MAX_TENSOR_BYTES, check_tensor_storage, element_count

log = logging.getLogger(__name__)

MIN_OPSET = 7
__all__ = ["MAX_TENSOR_BYTES", "MIN_OPSET", "check_level", "validate_model"]
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")


def validate_model(model: onnx.ModelProto) -> list[str]:
    """Raise InputError for unusable models; return warnings for suspicious ones."""
    warnings: list[str] = []
    _check_opsets(model, warnings)
    for graph in iter_graphs(model.graph):
        _check_tensors(graph, warnings)
    # cycles first: in a cycle every name looks "read before defined", a misleading message
    for graph in iter_graphs(model.graph):
        if topological_order(graph) is None:
            where = "graph" if graph is model.graph else f"subgraph {graph.name!r}"
            raise InputError(f"{where} has a cycle")
    _check_names(model.graph, set())
    return warnings


def _check_opsets(model: onnx.ModelProto, warnings: list[str]) -> None:
    imported = {o.domain: o.version for o in model.opset_import}
    default = imported.get("", imported.get("ai.onnx"))
    newest = onnx.defs.onnx_opset_version()
    if default is None:
        raise InputError("model imports no default ONNX opset")
    if not MIN_OPSET <= default <= newest:
        raise InputError(f"default opset {default} outside the supported range {MIN_OPSET}-{newest}")
    used = {n.domain for g in iter_graphs(model.graph) for n in g.node}
    local_functions = {f.domain for f in model.functions}
    for domain in sorted(used):
        if domain not in imported and not (domain == "" and "ai.onnx" in imported):
            raise InputError(f"operators of domain {domain!r} are used but the model does not import it")
        if domain not in STANDARD_DOMAINS and domain not in local_functions:
            warnings.append(f"custom domain {domain!r}: its nodes are passed through untouched")


def _check_tensors(graph: onnx.GraphProto, warnings: list[str]) -> None:
    for tensor in graph.initializer:
        _check_tensor(tensor, warnings)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _check_tensor(attr.t, warnings, owner=node.name or node.op_type)


def _check_tensor(tensor: onnx.TensorProto, warnings: list[str], owner: str | None = None) -> None:
    label = f"tensor {tensor.name or owner!r}"
    check_tensor_storage(tensor, label)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    count = element_count(tensor)
    if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16) and count:
        values = onnx.numpy_helper.to_array(tensor)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            warnings.append(f"{label}: {bad} NaN/Inf value(s)")


def _check_names(graph: onnx.GraphProto, outer: set[str]) -> None:
    defined = set(outer)
    own: set[str] = set()
    for name in [i.name for i in graph.input] + [t.name for t in graph.initializer]:
        if name in own and name not in {i.name for i in graph.input} & {t.name for t in graph.initializer}:
            raise InputError(f"name {name!r} is defined twice")
        own.add(name)
    defined |= own
    order = topological_order(graph)
    for node in order if order is not None else graph.node:
        for name in node.input:
            if name and name not in defined:
                raise InputError(f"node {node.name or node.op_type!r} reads {name!r}, which nothing defines")
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                _check_names(sub, defined)
        for name in node.output:
            if name and name in own:
                raise InputError(f"tensor {name!r} is produced twice")
            own.add(name)
            defined.add(name)
    for out in graph.output:
        if out.name not in defined:
            raise InputError(f"graph output {out.name!r} is never produced")


def check_level(model: onnx.ModelProto) -> str:
    """'full' when the full checker with shape inference passes, else 'basic'; refuse otherwise."""
    from graphopt.ir.check import check_model

    try:
        check_model(model, full=True)
        return "full"
    except Exception as full_err:
        log.info("full check fails on the input (%s); holding passes to the basic check",
                 str(full_err).splitlines()[0][:200] if str(full_err) else type(full_err).__name__)
    try:
        check_model(model, full=False)
        return "basic"
    except Exception as err:
        raise InputError(f"invalid ONNX model: {str(err).strip().splitlines()[0][:300]}") from err
