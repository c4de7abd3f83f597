"""Params and MACs for the pruning report, from inferred shapes (no runtime probing).

    Conv           MACs = prod(output dims) * (C_in / group) * prod(kernel)
    ConvTranspose  MACs = prod(input dims) * (C_out / group) * prod(kernel)
    Gemm / MatMul  MACs = prod(output dims) * K
Symbolic dims (batch, sequence) count as 1, so the numbers are per sample. Params are
the elements of every initializer. graphopt.targets.estimate_cost gives the same counts
for these ops but probes the model in onnxruntime, which costs seconds on big models;
the report's cost section still comes from the target cost model.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.ir import infer_shapes


def _dims(vi) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
            for d in vi.type.tensor_type.shape.dim]


def count_cost(model: onnx.ModelProto, inferred: bool = False) -> dict:
    """{"params", "macs"} of `model` (shape inference runs unless `inferred`)."""
    model = model if inferred else infer_shapes(model)
    g = model.graph
    shapes = {vi.name: _dims(vi) for vi in list(g.input) + list(g.value_info) + list(g.output)}
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    macs = 0
    for node in g.node:
        ins = [shapes.get(n) for n in node.input]
        outs = shapes.get(node.output[0]) if node.output else None
        if outs is None or len(ins) < 2 or ins[0] is None or ins[1] is None:
            continue
        if node.op_type == "Conv":
            macs += int(np.prod(outs)) * int(np.prod(ins[1][1:]))
        elif node.op_type == "ConvTranspose":
            macs += int(np.prod(ins[0])) * ins[1][1] * int(np.prod(ins[1][2:]))
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            macs += int(np.prod(outs)) * ins[0][0 if trans_a else -1]
        elif node.op_type == "MatMul":
            macs += int(np.prod(outs)) * ins[0][-1]
    params = sum(int(np.prod(t.dims)) for t in g.initializer)
    return {"params": params, "macs": int(macs)}
