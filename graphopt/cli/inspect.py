"""`graphopt inspect`: what a model is made of."""

from __future__ import annotations

from collections import Counter

COMMAND = "inspect"
HELP = "summarize a model: inputs, outputs, opsets, op histogram, params, sparsity annotations"


def configure(parser) -> None:
    parser.add_argument("model")
    parser.add_argument("--json", action="store_true")


def inspect_model(model) -> dict:
    from graphopt.ir import iter_graphs
    from graphopt.pipeline import model_stats
    from graphopt.verify.inputs import graph_inputs

    ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}"
                  for g in iter_graphs(model.graph) for n in g.node)
    info = {"ir_version": model.ir_version, "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "inputs": {i.name: _signature(i) for i in graph_inputs(model)},
            "outputs": {o.name: _signature(o) for o in model.graph.output},
            **model_stats(model), "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
            "metadata": {p.key: p.value[:200] for p in model.metadata_props}}
    try:
        from graphopt.sparsity_check import check_sparsity

        sparsity = check_sparsity(model)
        if sparsity:
            info["sparsity"] = sparsity
    except ImportError:
        pass
    return info


def _signature(value) -> str:
    from onnx import TensorProto

    t = value.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) if (d.dim_param or d.HasField("dim_value")) else "?" for d in t.shape.dim]
    return f"{TensorProto.DataType.Name(t.elem_type).lower()}[{','.join(dims)}]"


def run(args) -> int:
    from graphopt.ir import load_model
    from graphopt.report import to_json

    info = inspect_model(load_model(args.model))
    if args.json:
        print(to_json(info))
        return 0
    for key in ("ir_version", "producer", "opsets", "nodes", "params", "bytes"):
        print(f"{key}: {info[key]}")
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for name, sig in info[kind].items():
            print(f"  {name}: {sig}")
    print("ops: " + ", ".join(f"{op} x{n}" for op, n in info["ops"].items()))
    if info.get("sparsity"):
        print(f"sparsity: {info['sparsity']}")
    return 0
