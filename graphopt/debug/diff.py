"""`diff`: what differs between two models, structurally and in their weights.

Nodes are matched by name (unnamed nodes by op type and first output). For initializers
matched by name with equal shapes the value difference is reported as
max |a - b| and relative error max |a - b| / max |a| (after casting both to float64, so a
float weight and its int8 replacement still compare).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.ir import iter_graphs
from graphopt.pipeline import model_stats

log = logging.getLogger(__name__)


def diff(a, b) -> dict:
    """Structural and weight diff of models `a` and `b` (paths or ModelProtos)."""
    from graphopt.api import as_model

    ma, mb = as_model(a), as_model(b)
    result = {"a": model_stats(ma), "b": model_stats(mb),
              "op_types": _op_type_diff(ma, mb), "nodes": _node_diff(ma.graph, mb.graph),
              "initializers": _initializer_diff(ma.graph, mb.graph),
              "signature": _signature_diff(ma, mb), "opsets": _opset_diff(ma, mb)}
    result["params"] = {"a": result["a"]["params"], "b": result["b"]["params"],
                        "delta": result["b"]["params"] - result["a"]["params"]}
    nodes, inits = result["nodes"], result["initializers"]
    result["identical"] = not (result["op_types"]["changed"] or any(nodes[k] for k in ("added", "removed", "changed"))
                               or any(inits[k] for k in ("added", "removed", "changed"))
                               or any(result["signature"].values()) or result["opsets"])
    return result


def _op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type if not node.domain else f"{node.domain}.{node.op_type}"
                   for graph in iter_graphs(model.graph) for node in graph.node)


def _op_type_diff(ma, mb) -> dict:
    ca, cb = _op_counts(ma), _op_counts(mb)
    changed = {op: {"a": ca[op], "b": cb[op], "delta": cb[op] - ca[op]}
               for op in sorted(set(ca) | set(cb)) if ca[op] != cb[op]}
    return {"changed": changed,
            "added": {op: v["delta"] for op, v in changed.items() if v["delta"] > 0},
            "removed": {op: -v["delta"] for op, v in changed.items() if v["delta"] < 0}}


def _node_key(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}:{node.output[0] if node.output else ''}"


def _node_diff(ga: onnx.GraphProto, gb: onnx.GraphProto) -> dict:
    na = {_node_key(n): n for n in ga.node}
    nb = {_node_key(n): n for n in gb.node}
    changed = []
    for key in [k for k in na if k in nb]:
        changes = _node_changes(na[key], nb[key])
        if changes:
            changed.append({"name": key, "op_type": nb[key].op_type, "changes": changes})
    return {"added": [{"name": k, "op_type": nb[k].op_type} for k in nb if k not in na],
            "removed": [{"name": k, "op_type": na[k].op_type} for k in na if k not in nb],
            "changed": changed}


def _node_changes(a: onnx.NodeProto, b: onnx.NodeProto) -> list[str]:
    changes = []
    if (a.domain, a.op_type) != (b.domain, b.op_type):
        changes.append(f"op_type {a.op_type} -> {b.op_type}")
    if list(a.input) != list(b.input):
        changes.append(f"inputs {list(a.input)} -> {list(b.input)}")
    if list(a.output) != list(b.output):
        changes.append(f"outputs {list(a.output)} -> {list(b.output)}")
    attrs_a = {x.name: x for x in a.attribute}
    attrs_b = {x.name: x for x in b.attribute}
    for name in sorted(set(attrs_a) | set(attrs_b)):
        va, vb = attrs_a.get(name), attrs_b.get(name)
        if va is None or vb is None or va.SerializeToString(deterministic=True) != vb.SerializeToString(
                deterministic=True):
            changes.append(f"attribute {name}: {_attr_text(va)} -> {_attr_text(vb)}")
    return changes


def _attr_text(attr) -> str:
    if attr is None:
        return "(absent)"
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return "<subgraph>"
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, onnx.TensorProto):
        return f"<tensor {list(value.dims)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _initializer_diff(ga: onnx.GraphProto, gb: onnx.GraphProto) -> dict:
    ia = {t.name: t for t in ga.initializer}
    ib = {t.name: t for t in gb.initializer}
    changed = []
    for name in [n for n in ia if n in ib]:
        row = _tensor_change(name, ia[name], ib[name])
        if row:
            changed.append(row)
    changed.sort(key=lambda row: -row.get("relative_error", float("inf")))
    return {"added": [_describe(ib[n]) for n in ib if n not in ia],
            "removed": [_describe(ia[n]) for n in ia if n not in ib],
            "changed": changed}


def _describe(t: onnx.TensorProto) -> dict:
    return {"name": t.name, "shape": list(t.dims), "dtype": helper.tensor_dtype_to_np_dtype(t.data_type).name}


def _tensor_change(name, ta: onnx.TensorProto, tb: onnx.TensorProto) -> dict | None:
    if ta.SerializeToString(deterministic=True) == tb.SerializeToString(deterministic=True):
        return None
    a, b = numpy_helper.to_array(ta), numpy_helper.to_array(tb)
    row = {"name": name, "shape_a": list(a.shape), "shape_b": list(b.shape),
           "dtype_a": a.dtype.name, "dtype_b": b.dtype.name}
    if a.shape != b.shape:
        return row
    if a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
        return None  # same values, different encoding (raw_data vs float_data)
    if a.dtype.kind in "fiub" and b.dtype.kind in "fiub":
        fa, fb = a.astype(np.float64), b.astype(np.float64)
        err = np.abs(fa - fb)
        scale = float(np.max(np.abs(fa))) if fa.size else 0.0
        row["max_abs_error"] = float(err.max()) if err.size else 0.0
        row["relative_error"] = row["max_abs_error"] / scale if scale > 0 else float(row["max_abs_error"] > 0)
        row["elements_changed"] = int(np.count_nonzero(err))
    return row


def _signature_diff(ma, mb) -> dict:
    def sig(values):
        return {v.name: str(v.type).replace("\n", " ").strip() for v in values}

    inits_a = {t.name for t in ma.graph.initializer}
    inits_b = {t.name for t in mb.graph.initializer}
    out = {}
    for key, va, vb in (("inputs", [i for i in ma.graph.input if i.name not in inits_a],
                         [i for i in mb.graph.input if i.name not in inits_b]),
                        ("outputs", ma.graph.output, mb.graph.output)):
        sa, sb = sig(va), sig(vb)
        out[key] = [{"name": n, "a": sa.get(n), "b": sb.get(n)} for n in sorted(set(sa) | set(sb))
                    if sa.get(n) != sb.get(n)]
    return out


def _opset_diff(ma, mb) -> dict:
    oa = {o.domain or "ai.onnx": o.version for o in ma.opset_import}
    ob = {o.domain or "ai.onnx": o.version for o in mb.opset_import}
    return {d: {"a": oa.get(d), "b": ob.get(d)} for d in sorted(set(oa) | set(ob)) if oa.get(d) != ob.get(d)}
