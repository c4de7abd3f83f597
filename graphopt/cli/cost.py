"""`graphopt cost`: what a model costs on one or more targets (one column per target)."""

from __future__ import annotations

import json

from graphopt.errors import InputError

COMMAND = "cost"
HELP = "estimate MACs, bytes, latency, energy, memory and fit of a model on targets"

ROWS = [  # (label, key, formatter)
    ("device", "device", str),
    ("MACs", "macs", lambda v: f"{v / 1e6:,.2f} M"),
    ("FLOPs", "flops", lambda v: f"{v / 1e6:,.2f} M"),
    ("params", "params", lambda v: f"{v:,}"),
    ("weight bytes", "weight_bytes", lambda v: _bytes(v)),
    ("bytes moved", "bytes_moved", lambda v: _bytes(v)),
    ("peak activations", "peak_activation_bytes", lambda v: _bytes(v)),
    ("arena (planned)", "arena_bytes", lambda v: _bytes(v)),
    ("latency", "latency_ms", lambda v: f"{v:,.3f} ms"),
    ("energy", "energy_mj", lambda v: f"{v:,.4f} mJ"),
    ("nodes run", "nodes_executed", str),
    ("fits", "fits", lambda v: "yes" if v else "NO"),
]


def configure(parser) -> None:
    parser.add_argument("model", help="ONNX file")
    parser.add_argument("--target", action="append", metavar="T",
                        help="built-in target (cpu, gpu, npu, mcu) or a target .toml; repeat for columns "
                             "(default: cpu)")
    parser.add_argument("--per-node", action="store_true", help="add a per-node table per target")
    parser.add_argument("--json", action="store_true", help="print JSON {target: cost} instead of tables")
    parser.add_argument("--optimize-order", action="store_true",
                        help="search an execution order with a lower activation peak (MCU)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                        help="concrete shape for a dynamic input (default: symbolic dims = 1)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all the target's cores)")


def parse_shapes(specs: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise InputError(f"--input-shape {spec!r}: expected NAME=D0,D1,... with integers") from None
        if not sep or not name or any(d <= 0 for d in shapes[name]):
            raise InputError(f"--input-shape {spec!r}: expected NAME=D0,D1,... with positive integers")
    return shapes


def run(args) -> int:
    from graphopt.ir import load_model
    from graphopt.targets import estimate_cost, load_target

    model = load_model(args.model)
    shapes = parse_shapes(args.input_shape)
    targets = [load_target(t) for t in (args.target or ["cpu"])]
    costs = {}
    for target in targets:
        costs[target.name] = estimate_cost(model, target, per_node=args.per_node, input_shapes=shapes,
                                           optimize_order=args.optimize_order, threads=args.threads)
    if args.json:
        print(json.dumps(costs, indent=2, default=str))
        return 0
    print(render(costs, args.model))
    if args.per_node:
        for name, cost in costs.items():
            print()
            print(render_nodes(name, cost["nodes"]))
    return 0


def render(costs: dict, label: str) -> str:
    names = list(costs)
    rows = [[lbl] + [fmt(costs[n][key]) for n in names] for lbl, key, fmt in ROWS if key != "device"]
    lines = _table([label] + names, rows)
    for n in names:
        cost = costs[n]
        lines.append(f"{n}: {cost['device']}")
        lines.append(f"  fit: {'; '.join(cost['fit']['messages'])}")
        for op, entry in cost["unsupported_ops"].items():
            lines.append(f"  {op} x{entry['count']}: {entry['reason']} -> {entry['action']}")
        if cost["notes"]:
            lines.append(f"  {len(cost['notes'])} note(s), first: {cost['notes'][0]}")
        if cost["unknown_ops"]:
            lines.append("  not modelled (bytes only): " + ", ".join(f"{k} x{v}" for k, v in cost["unknown_ops"].items()))
    return "\n".join(lines)


def render_nodes(target: str, nodes: list[dict]) -> str:
    header = ["node", "op", "dtype", "MACs", "bytes", "ops/byte", "bound", "latency us", "note"]
    rows = [[r["name"][:40], r["op_type"], r["dtype"], f"{r['macs']:,}", f"{r['bytes']:,}",
             f"{r['intensity']:.1f}", r["bound"], f"{r['latency_ms'] * 1e3:.2f}",
             r["fused"] or r["unsupported"]] for r in nodes]
    return "\n".join([f"per-node cost on {target}"] + _table(header, rows))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    if n < 2**20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 2**20:.2f} MiB"
