"""`graphopt verify`: compare a candidate model with its reference."""

from __future__ import annotations

import json

from graphopt.cli.common import add_threshold_arguments, thresholds_from

COMMAND = "verify"
HELP = "compare a candidate model's outputs with a reference model's (exit 2 when thresholds fail)"


def configure(parser) -> None:
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--inputs", help=".npz with one array per input (default: synthesized, seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lossless", action="store_true", help="also require 1e-5 relative agreement")
    parser.add_argument("--json", action="store_true", help="print the verification as JSON")
    add_threshold_arguments(parser, default_cosine=0.99)


def run(args) -> int:
    import graphopt
    from graphopt.report import to_json

    limits = thresholds_from(args)
    result = graphopt.verify(args.reference, args.candidate, inputs=args.inputs, seed=args.seed,
                             lossless=args.lossless, **limits)
    if args.json:
        print(to_json(result))
    else:
        for name, m in result["outputs"].items():
            shown = ", ".join(f"{k}={m[k]:.6g}" for k in ("max_abs_error", "cosine", "snr_db", "top1_agreement")
                              if isinstance(m.get(k), float))
            print(f"{name}: {shown or json.dumps(m)}")
        for failure in result["failures"]:
            print(f"FAILED {failure}")
        print("PASSED" if result["passed"] else "FAILED", f"({result['samples']} samples)")
    return 0 if result["passed"] else 2
