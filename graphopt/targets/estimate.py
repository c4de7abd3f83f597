"""Whole-model cost on a target: totals, per-node rows, memory plan and fit verdict.

    latency  = run_overhead + sum over executed nodes of roofline latency (roofline.py)
    energy   = sum of node energies
    params   = elements of every initializer and Constant tensor
    weight_bytes = their stored bytes (int8 = 1, int4 = 0.5 per element)
    bytes_moved  = activation bytes read and written + weight bytes read

What runs is what a runtime would run: nodes whose inputs are all constant are folded at
load time (cost 0); Q/DQ nodes absorbed into quantized regions (qdq.py) cost 0; on a
target that fuses activations, a Relu/Clip/... (or a BatchNormalization, or a bias Add)
that is the only consumer of a Conv/Gemm/MatMul output is absorbed into it. If
branches count the costlier branch; a Loop body counts its constant trip count (else 1).
Fit: every memory level must hold what lives there (weights, the planned activation
arena); a level too small spills to a larger cache-less level when one exists, and a
model with ops the target cannot run does not fit either.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx

from graphopt.targets import memory, qdq
from graphopt.targets.fit import check_fit
from graphopt.targets.ops import VIEW_OPS, NodeWork, analyze, element_bytes
from graphopt.targets.roofline import Placement, placement, price
from graphopt.targets.schema import DTYPES, Target, load_target
from graphopt.targets.shapes import ShapeTable, resolve

log = logging.getLogger(__name__)

from graphopt.sparsity_check import SPARSITY_METADATA_KEY as SPARSITY_KEY  # noqa: E402 - one key for writer and reader
PRODUCERS_THAT_FUSE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "FusedConv"}
FUSABLE_EPILOGUE = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
                    "HardSwish", "BatchNormalization", "Add"}
INPLACE_OPS = set(VIEW_OPS) | {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "LeakyRelu", "Sigmoid",
                               "Tanh", "HardSigmoid", "HardSwish", "Abs", "Neg", "Exp", "Sqrt",
                               "Erf", "Gelu", "BatchNormalization", "QuantizeLinear",
                               "DequantizeLinear", "Softmax", "Elu", "PRelu", "Pow", "Max", "Min"}
NO_DTYPE_CHECK = set(VIEW_OPS) | {"Shape", "Size", "Constant", "QuantizeLinear", "DequantizeLinear"}


def estimate_cost(model: onnx.ModelProto, target="cpu", per_node: bool = False,
                  input_shapes: dict | None = None, optimize_order: bool = False,
                  threads: int | None = None) -> dict:
    """Cost of `model` on `target` (see module docstring); `threads` defaults to all cores."""
    target = load_target(target)
    threads = threads or target.cores
    resolved, table = resolve(model, input_shapes)
    graph = resolved.graph
    constants = _constants(graph, table)
    sparse = _sparse_tensors(model)
    rows = _analyze_graph(graph, table, constants, sparse, target)
    weights_bytes, params = _weights(graph)
    plan, order_note = _arena(graph, rows, table, constants, optimize_order)
    place = placement(target, weights_bytes, plan.arena_bytes)
    _price_rows(rows, target, place, threads)
    result = _totals(rows, target, params, weights_bytes, plan, threads)
    result["fit"] = check_fit(target, weights_bytes, plan, result["unsupported_ops"])
    result["fits"] = result["fit"]["fits"]
    result["memory_plan"] = {"arena_bytes": plan.arena_bytes, "peak_step": plan.peak_step,
                             "inplace_tensors": len(plan.inplace), "order": order_note}
    unresolved = sorted({r["work"].name for r in rows if r["work"].notes})
    result["notes"] = [f"{r['work'].name}: {n}" for r in rows for n in r["work"].notes][:50]
    if per_node:
        result["nodes"] = [_row(r) for r in rows]
    log.debug("estimated %s on %s; %d nodes with notes", graph.name, target.name, len(unresolved))
    return result


def _constants(graph: onnx.GraphProto, table: ShapeTable) -> set[str]:
    """Initializers, Constant outputs, and outputs of nodes whose inputs are all constant.

    With concrete input shapes, Shape/Size of a tensor are constants too (runtimes fold
    them at load), and so is the shape arithmetic hanging off them.
    """
    names = {t.name for t in graph.initializer}
    for node in graph.node:
        static_shape = node.op_type in ("Shape", "Size") and table.known(node.input[0])
        if node.op_type == "Constant" or static_shape or (
                node.input and all(x in names for x in node.input if x) and not _has_subgraph(node)):
            names.update(o for o in node.output if o)
    return names


def _has_subgraph(node) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _sparse_tensors(model: onnx.ModelProto) -> set[str]:
    for prop in model.metadata_props:
        if prop.key == SPARSITY_KEY:
            try:
                meta = json.loads(prop.value)
                return set(meta.get("tensors", {})) if meta.get("pattern") == "2:4" else set()
            except (ValueError, AttributeError):
                log.info("metadata %s is not valid JSON; ignored", SPARSITY_KEY)
    return set()


def _analyze_graph(graph, table: ShapeTable, constants, sparse, target, prefix="", mult=1) -> list[dict]:
    nodes = list(graph.node)
    qplan = qdq.plan(nodes, table, constants)
    consumers = _consumers(nodes)
    producers = {o: n for n in nodes for o in n.output if o}
    outputs = {o.name for o in graph.output}
    dq_source = {n.output[0]: n.input[0] for n in nodes if n.op_type == "DequantizeLinear"}
    rows = []
    for i, node in enumerate(nodes):
        if _has_subgraph(node):
            rows.extend(_subgraph_rows(node, table, constants, sparse, target, prefix, mult))
        work = analyze(node, table, constants, qplan.io_types.get(i))
        work.name = prefix + work.name
        if i in qplan.dtype:
            work.dtype = qplan.dtype[i]
        if node.output and all(o in constants for o in node.output if o):
            work.fused = "constant-folded at load"
        elif i in qplan.fused:
            work.fused = qplan.fused[i]
        elif target.fuses_activations:
            work.fused = _epilogue_fusion(node, producers, consumers, outputs, constants)
        weight = node.input[1] if len(node.input) > 1 else ""
        work.sparse_weight = bool(sparse) and (weight in sparse or dq_source.get(weight) in sparse)
        rows.append({"work": work, "node": node, "mult": mult, "top": not prefix, "io": qplan.io_types.get(i, {}),
                     "unsupported": _unsupported(node, work, target)})
    return rows


def _consumers(nodes) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in nodes:
        for x in n.input:
            out.setdefault(x, []).append(n)
    return out


def _epilogue_fusion(node, producers, consumers, outputs, constants) -> str:
    if node.op_type not in FUSABLE_EPILOGUE or not node.input:
        return ""
    source = node.input[0]
    producer = producers.get(source)
    if producer is None or producer.op_type not in PRODUCERS_THAT_FUSE:
        return ""
    if len(consumers.get(source, [])) != 1 or source in outputs:
        return ""
    # BN and Add fold only with constant parameters (BN fold, bias add).
    if node.op_type in ("BatchNormalization", "Add") and not all(x in constants for x in node.input[1:] if x):
        return ""
    return f"fused into {producer.op_type} {producer.name}"


def _unsupported(node, work: NodeWork, target: Target) -> str:
    if work.fused:
        return ""
    if not target.supports_op(node.op_type, node.domain):
        return f"op {node.op_type} not supported"
    if node.op_type not in NO_DTYPE_CHECK and work.dtype in DTYPES and not target.supports_dtype(work.dtype):
        return f"dtype {work.dtype} not supported"
    return ""


def _subgraph_rows(node, table, constants, sparse, target, prefix, mult) -> list[dict]:
    branches = [(a.name, a.g) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    # Loop/Scan bodies count once: trip counts are data, not shapes.
    costed = []
    for attr_name, sub in branches:
        sub_constants = constants | _constants(sub, table)
        costed.append(_analyze_graph(sub, table, sub_constants, sparse, target,
                                     f"{prefix}{node.name}/{attr_name}/", mult))
    if node.op_type == "If" and costed:
        return max(costed, key=lambda rs: sum(r["work"].macs + r["work"].read_bytes for r in rs))
    return [r for rs in costed for r in rs]


def _weights(graph: onnx.GraphProto) -> tuple[float, int]:
    total_bytes, params = 0.0, 0
    for t in graph.initializer:
        n = int(np.prod(t.dims, dtype=np.int64))
        params += n
        total_bytes += n * element_bytes(t.data_type)
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    n = int(np.prod(a.t.dims, dtype=np.int64))
                    params += n
                    total_bytes += n * element_bytes(a.t.data_type)
    return total_bytes, params


def _arena(graph, rows, table: ShapeTable, constants, optimize_order):
    """Arena over the top-level nodes that run; absorbed Q/DQ alias their tensors."""
    alias: dict[str, str] = {}
    top = [r for r in rows if r["top"]]
    for r in top:
        node, work = r["node"], r["work"]
        if work.fused and node.op_type in ("QuantizeLinear", "DequantizeLinear", *FUSABLE_EPILOGUE) \
                and node.input and node.input[0] not in constants:
            # The absorbed node's output is its input's buffer, re-typed.
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
    sizes: dict[str, int] = {}
    for r in top:
        for name in list(r["node"].input) + list(r["node"].output):
            if name and name not in constants:
                canon = alias.get(name, name)
                elem = r["io"].get(name, table.elem_type(name))
                size = int(np.ceil(table.numel(name) * element_bytes(elem)))
                sizes[canon] = min(sizes.get(canon, size), size)
    steps = []
    for r in top:
        node, work = r["node"], r["work"]
        if work.fused:
            continue
        ins = tuple(dict.fromkeys(alias.get(x, x) for x in node.input if x and x not in constants))
        outs = tuple(alias.get(o, o) for o in node.output if o)
        steps.append(memory.Step(work.name, ins, outs, node.op_type in INPLACE_OPS))
    inits = {t.name for t in graph.initializer}
    g_in = {alias.get(i.name, i.name) for i in graph.input if i.name not in inits}
    g_out = {alias.get(o.name, o.name) for o in graph.output}
    note = "given order"
    if optimize_order:
        steps, note = memory.best_order(steps, sizes, g_in, g_out)
    return memory.plan_arena(steps, sizes, g_in, g_out), note


def _price_rows(rows, target: Target, place: Placement, threads: int) -> None:
    for r in rows:
        r["priced"] = price(r["work"], target, place, threads, bool(r["unsupported"]))


def _totals(rows, target: Target, params, weight_bytes, plan, threads) -> dict:
    run = [r for r in rows if not r["work"].fused]
    mult = [r["mult"] for r in rows]
    act = sum((r["work"].read_bytes + r["work"].write_bytes) * r["mult"] for r in run)
    wread = sum(r["work"].weight_bytes * r["mult"] for r in run)
    latency = target.run_overhead_us * 1e-6 + sum(r["priced"].latency_s * r["mult"] for r in rows)
    unsupported: dict[str, dict] = {}
    action = (f"fallback to {target.fallback.device}" if target.unsupported_action == "fallback"
              and target.fallback else "cannot run")
    for r in rows:
        if r["unsupported"]:
            entry = unsupported.setdefault(r["node"].op_type, {"count": 0, "action": action, "reason": r["unsupported"]})
            entry["count"] += 1
    unknown: dict[str, int] = {}
    for r in rows:
        if not r["work"].known:
            unknown[r["node"].op_type] = unknown.get(r["node"].op_type, 0) + 1
    return {
        "target": target.name, "device": target.description, "threads": min(threads, target.cores),
        "macs": int(sum(r["work"].macs * m for r, m in zip(rows, mult))),
        "flops": int(sum(r["work"].flops * m for r, m in zip(rows, mult))),
        "params": int(params), "weight_bytes": int(np.ceil(weight_bytes)),
        "activation_bytes_moved": int(act), "bytes_moved": int(act + wread),
        "latency_ms": latency * 1e3,
        "energy_mj": sum(r["priced"].energy_j * r["mult"] for r in rows) * 1e3,
        "peak_activation_bytes": int(plan.peak_bytes), "arena_bytes": int(plan.arena_bytes),
        "nodes_executed": len(run), "nodes_total": len(rows),
        "unsupported_ops": unsupported, "unknown_ops": unknown,
    }


def _row(r: dict) -> dict:
    w, p = r["work"], r["priced"]
    total = 0.0 if w.fused else w.read_bytes + w.write_bytes + w.weight_bytes
    return {"name": w.name, "op_type": w.op_type, "macs": int(w.macs * r["mult"]),
            "flops": int(w.flops * r["mult"]), "bytes": int(total * r["mult"]),
            "intensity": (w.flops / total) if total else 0.0, "bound": p.bound, "dtype": w.dtype,
            "latency_ms": p.latency_s * r["mult"] * 1e3, "energy_mj": p.energy_j * r["mult"] * 1e3,
            "fused": w.fused, "unsupported": r["unsupported"]}
