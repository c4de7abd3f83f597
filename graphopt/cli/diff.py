"""`graphopt diff`: structural and weight differences between two models."""

from __future__ import annotations

COMMAND = "diff"
HELP = "structural and weight diff of two models (op counts, nodes, attributes, initializers)"


def configure(parser) -> None:
    parser.add_argument("a", help="first model (e.g. the original)")
    parser.add_argument("b", help="second model (e.g. the optimized one)")
    parser.add_argument("--limit", type=int, default=20, help="most rows shown per section (text output)")
    parser.add_argument("--json", action="store_true", help="print the full diff as JSON")


def run(args) -> int:
    from graphopt.debug import diff
    from graphopt.report import to_json

    result = diff(args.a, args.b)
    print(to_json(result) if args.json else render_text(result, args.limit))
    return 0


def render_text(result: dict, limit: int = 20) -> str:
    a, b = result["a"], result["b"]
    if result["identical"]:
        return "models are structurally identical (same nodes, attributes and initializer values)"
    lines = [f"nodes {a['nodes']} -> {b['nodes']}, params {a['params']} -> {b['params']} "
             f"({result['params']['delta']:+d}), bytes {a['bytes']} -> {b['bytes']}"]
    for op, row in result["op_types"]["changed"].items():
        lines.append(f"  {op}: {row['a']} -> {row['b']} ({row['delta']:+d})")
    nodes = result["nodes"]
    lines += _section("nodes added", [f"{n['name']} ({n['op_type']})" for n in nodes["added"]], limit)
    lines += _section("nodes removed", [f"{n['name']} ({n['op_type']})" for n in nodes["removed"]], limit)
    lines += _section("nodes changed", [f"{n['name']}: {'; '.join(n['changes'])}" for n in nodes["changed"]], limit)
    inits = result["initializers"]
    lines += _section("initializers added", [f"{t['name']} {t['shape']} {t['dtype']}" for t in inits["added"]], limit)
    lines += _section("initializers removed", [f"{t['name']} {t['shape']} {t['dtype']}" for t in inits["removed"]], limit)
    lines += _section("initializers changed", [_init_text(t) for t in inits["changed"]], limit)
    for key, rows in result["signature"].items():
        lines += _section(f"{key} changed", [f"{r['name']}: {r['a']} -> {r['b']}" for r in rows], limit)
    lines += _section("opsets changed", [f"{d}: {v['a']} -> {v['b']}" for d, v in result["opsets"].items()], limit)
    return "\n".join(lines)


def _section(title: str, rows: list[str], limit: int) -> list[str]:
    if not rows:
        return []
    shown = [f"  {row}" for row in rows[:limit]]
    more = [f"  ... {len(rows) - limit} more (use --json)"] if len(rows) > limit else []
    return [f"{title} ({len(rows)}):", *shown, *more]


def _init_text(row: dict) -> str:
    text = f"{row['name']} {row['shape_a']} {row['dtype_a']}"
    if row["shape_a"] != row["shape_b"] or row["dtype_a"] != row["dtype_b"]:
        text += f" -> {row['shape_b']} {row['dtype_b']}"
    if "max_abs_error" in row:
        text += f": max abs {row['max_abs_error']:.4g}, relative {row['relative_error']:.4g}, {row['elements_changed']} elements"
    return text
