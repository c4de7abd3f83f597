"""N:M structured-sparsity pattern: the metadata record and the check against the weights.

A weight W follows N:M along its reduction axis a when, after moving a to the last axis
and cutting it into consecutive groups of M,

    W' = moveaxis(W, a, -1).reshape(..., R / M, M)        (R = W.shape[a], R % M == 0)
    count_nonzero(W'[..., g, :]) <= N   for every group g.

That is the layout sparse tensor cores consume (2:4 on NVIDIA Ampere and later): each
output element's dot product reads groups of M consecutive input channels of which at
most N are non-zero. The reduction axis comes from the shared table in
graphopt/ir/axes.py (Conv axis 1, Gemm 0 or 1 by transB, MatMul -2), so the pass that
prunes and this check cannot disagree on the layout.

The record lives in `model.metadata_props[SPARSITY_METADATA_KEY]` as JSON

    {"pattern": "2:4", "n": 2, "m": 4,
     "tensors": {"<initializer>": {"axis": <reduction axis>, "node": "<node name>"}}}

and the model stays standard ONNX: a runtime that ignores the key runs the dense weights.
The GPU cost model (graphopt/targets/estimate.py) reads exactly this key.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx

from graphopt.ir import ConstantView, weight_axes

log = logging.getLogger(__name__)

SPARSITY_METADATA_KEY = "graphopt.sparsity"
SPARSE_OPS = ("Conv", "Gemm", "MatMul")


def group_view(weight: np.ndarray, axis: int, m: int) -> np.ndarray:
    """`weight` with `axis` moved last and cut into groups of `m`: shape [..., R/m, m]."""
    moved = np.moveaxis(weight, axis, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


def from_group_view(groups: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Inverse of `group_view` for a tensor of `shape`."""
    moved_shape = np.moveaxis(np.empty(shape, dtype=np.uint8), axis, -1).shape
    return np.moveaxis(groups.reshape(moved_shape), -1, axis)


def count_violations(weight: np.ndarray, axis: int, n: int, m: int) -> tuple[int, int]:
    """(groups with more than `n` non-zeros, total groups) along `axis`."""
    groups = group_view(weight, axis, m)
    nonzero = np.count_nonzero(groups, axis=-1)
    return int(np.sum(nonzero > n)), int(nonzero.size)


def weight_reduction_axis(node: onnx.NodeProto, weight: np.ndarray) -> int | None:
    """Non-negative reduction axis of `node`'s weight operand (input 1), from the shared table."""
    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    axes = weight_axes(node.op_type, attrs, rank=weight.ndim)
    if axes is None or weight.ndim < 2:
        return None
    return axes.reduction % weight.ndim


def read_metadata(model: onnx.ModelProto) -> dict | None:
    """The parsed sparsity record, None when absent; raises ValueError when malformed."""
    for prop in model.metadata_props:
        if prop.key == SPARSITY_METADATA_KEY:
            meta = json.loads(prop.value)
            if not isinstance(meta, dict) or not isinstance(meta.get("tensors", {}), dict):
                raise ValueError("expected a JSON object with a 'tensors' object")
            return meta
    return None


def write_metadata(model: onnx.ModelProto, meta: dict) -> None:
    """Set (or replace) the sparsity record; keys sorted so runs are byte-identical."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    for prop in model.metadata_props:
        if prop.key == SPARSITY_METADATA_KEY:
            prop.value = text
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = SPARSITY_METADATA_KEY, text


def check_sparsity(model: onnx.ModelProto) -> dict:
    """Validate the sparsity record against the weights; {} when the model has no record.

    Returns {"pattern", "n", "m", "ok", "errors": [...], "tensors": {name: {"ok", "axis",
    "node", "groups", "violations", "density", "error"?}}}. Never raises: a malformed
    record is reported as ok=False with the reason.
    """
    try:
        meta = read_metadata(model)
    except ValueError as err:
        return {"ok": False, "errors": [f"metadata {SPARSITY_METADATA_KEY} is malformed: {err}"], "tensors": {}}
    if meta is None:
        return {}
    n, m = meta.get("n"), meta.get("m")
    result = {"pattern": meta.get("pattern"), "n": n, "m": m, "ok": True, "errors": [], "tensors": {}}
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m) or meta.get("pattern") != f"{n}:{m}":
        result["ok"] = False
        result["errors"].append(f"bad pattern {meta.get('pattern')!r} with n={n!r}, m={m!r}")
        return result
    view = ConstantView(model.graph)
    nodes = {node.name: node for node in model.graph.node}
    for name, entry in sorted(meta["tensors"].items()):
        row = _check_tensor(name, entry, view, nodes, n, m)
        result["tensors"][name] = row
        if not row["ok"]:
            result["ok"] = False
    return result


def _check_tensor(name: str, entry: dict, view: ConstantView, nodes: dict, n: int, m: int) -> dict:
    axis, node_name = entry.get("axis"), entry.get("node")
    row = {"ok": False, "axis": axis, "node": node_name}
    weight = view.get(name)
    reason = _layout_problem(name, axis, node_name, weight, nodes, m)
    if reason:
        row["error"] = reason
        return row
    violations, groups = count_violations(weight, axis, n, m)
    row.update(ok=violations == 0, groups=groups, violations=violations,
               density=round(float(np.count_nonzero(weight)) / max(weight.size, 1), 4))
    return row


def _layout_problem(name, axis, node_name, weight, nodes, m) -> str | None:
    """Why the recorded (tensor, axis, node) cannot be checked, or None when it can."""
    if weight is None:
        return f"{name} is not a constant of the graph"
    if not isinstance(axis, int) or not 0 <= axis < weight.ndim:
        return f"axis {axis!r} out of range for a rank-{weight.ndim} tensor"
    if weight.shape[axis] % m:
        return f"reduction dim {weight.shape[axis]} is not a multiple of {m}"
    node = nodes.get(node_name)
    if node is None or len(node.input) < 2 or node.input[1] != name:
        return f"node {node_name!r} does not read {name} as its weight"
    if node.op_type not in SPARSE_OPS or weight_reduction_axis(node, weight) != axis:
        return f"axis {axis} is not the reduction axis of {node.op_type} {node_name!r}"
    return None
