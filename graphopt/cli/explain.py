"""`graphopt explain`: where (which tensor, along the depth) a candidate's error appears."""

from __future__ import annotations

COMMAND = "explain"
HELP = "layer-wise error localization: rank tensors by where the candidate's error appears and grows"


def configure(parser) -> None:
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--inputs", help=".npz with one array per input (default: synthesized, seeded)")
    parser.add_argument("--report", help="optimize report .json or --dump-dir whose tensor maps line up renamed tensors")
    parser.add_argument("--top", type=int, default=10, help="how many tensors to rank (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from graphopt.debug import explain
    from graphopt.errors import InputError
    from graphopt.report import to_json

    if args.top < 1:
        raise InputError("--top must be at least 1")
    result = explain(args.reference, args.candidate, inputs=args.inputs, tensor_map=args.report,
                     top=args.top, seed=args.seed)
    print(to_json(result) if args.json else render_text(result))
    return 0


def render_text(result: dict) -> str:
    lines = [f"{result['tensors_compared']} corresponding tensors on {result['samples']} samples "
             f"({result['candidate_tensors_unmatched']} candidate tensors without a counterpart)"]
    first = result.get("first_divergence")
    lines.append(f"error first above the {result['noise_floor_db']:g} dB floor at: "
                 + (f"{first['tensor']} ({first['op_type']} {first['node']})" if first else "nowhere"))
    lines.append(f"{'rank':>4}  {'introduced dB':>13}  {'SNR dB':>8}  {'cosine':>10}  {'max abs':>10}  tensor")
    for rank, row in enumerate(result["ranking"], 1):
        via = f" [{row['via']}: {row['candidate']}]" if row["candidate"] != row["tensor"] else ""
        lines.append(f"{rank:>4}  {row['introduced_db']:>13.2f}  {row['snr_db']:>8.2f}  {row['cosine']:>10.6f}  "
                     f"{row['max_abs_error']:>10.4g}  {row['tensor']} ({row['op_type']}){via}")
    return "\n".join(lines)
