"""`graphopt bisect`: the first pass (and the rewrite sites in it) that breaks the thresholds."""

from __future__ import annotations

from graphopt.cli.common import add_threshold_arguments, thresholds_from

COMMAND = "bisect"
HELP = "find the first pass, and the rewrite sites in it, after which the model misses the thresholds"


def configure(parser) -> None:
    parser.add_argument("input", help="the original .onnx model")
    spec = parser.add_mutually_exclusive_group(required=True)
    spec.add_argument("--passes", help="inline pipeline, e.g. 'cleanup,fuse,quantize'")
    spec.add_argument("--pipeline", help="pipeline TOML file")
    parser.add_argument("--target", help="built-in target (cpu, gpu, npu, mcu) or a target TOML file")
    data = parser.add_argument_group("data")
    data.add_argument("--inputs", help=".npz used for verification (default: calibration data or synthesized)")
    data.add_argument("--calibration-data", help=".npz with one array per input (axis 0 = samples)")
    data.add_argument("--seed", type=int, default=0, help="seed for synthesized data")
    parser.add_argument("--max-site-runs", type=int, default=64, help="most reruns of the failing pass to localize sites")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--report", help="also write the result as .json or .html (plots: per-step error, "
                        "site impact, error along depth)")
    add_threshold_arguments(parser, default_cosine=0.99)


def run(args) -> int:
    from graphopt.cli import show_progress
    from graphopt.debug import bisect
    from graphopt.report import to_json, write_report

    _check_report(args.report)
    result = bisect(args.input, passes=args.passes, pipeline=args.pipeline, inputs=args.inputs,
                    thresholds=thresholds_from(args), target=args.target,
                    calibration_data=args.calibration_data, seed=args.seed,
                    max_site_runs=args.max_site_runs, progress=show_progress())
    print(to_json(result) if args.json else render_text(result))
    if args.report:
        write_report({"target": result["target"], "pipeline": result["pipeline"], "bisect": result,
                      "explain": result.get("explain")}, args.report)
    return 0 if result["passed"] else 2


def _check_report(path) -> None:
    """Refuse a bad report path before the (long) bisect runs."""
    from pathlib import Path

    from graphopt.errors import InputError

    if path is None:
        return
    if Path(path).suffix.lower() not in (".json", ".html", ".htm"):
        raise InputError(f"{path}: bisect report must end in .json or .html")
    if not Path(path).parent.exists():
        raise InputError(f"{Path(path).parent}: report directory does not exist")


def render_text(result: dict) -> str:
    lines = [f"bisect {result['pipeline']} on {result['samples']} samples, thresholds "
             + ", ".join(f"{k}={v:g}" for k, v in result["thresholds"].items())]
    for row in result["steps"]:
        lines.append(f"  step {row['step']} {row['name']}: {'ok' if row['passed'] else 'FAIL'}"
                     + _metrics(row) + (f"  [{row['sites']} sites]" if row.get("sites") else ""))
    culprit = result.get("culprit")
    if not culprit:
        lines.append("no pass breaks the thresholds")
        return "\n".join(lines)
    lines.append(f"first failing pass: {culprit['name']} (step {culprit['step']})")
    for reason in culprit.get("failures", []) + ([culprit["error"]] if culprit.get("error") else []):
        lines.append(f"  {reason}")
    if culprit.get("localized"):
        lines.append(f"  responsible site(s), reverting these passes: {', '.join(culprit['sites'])}")
        if len(culprit["causes"]) > 1 or len(culprit["causes"][0]) > 1:
            lines.append("  independent causes: " + "; ".join(" + ".join(c) for c in culprit["causes"]))
        lines.append(f"  ({culprit['sites_total']} sites, {culprit['reruns']} reruns of the pass)")
    else:
        lines.append(f"  sites not localized: {culprit.get('note')}")
    first = (result.get("explain") or {}).get("first_divergence")
    top = ((result.get("explain") or {}).get("ranking") or [None])[0]
    for label, row in (("error first appears at", first), ("largest error jump at", top)):
        if row:
            lines.append(f"  {label}: {row['tensor']} ({row['op_type']} {row['node']}), "
                         f"SNR {row['snr_db']:.1f} dB, +{row['introduced_db']:.1f} dB introduced")
    return "\n".join(lines)


def _metrics(row: dict) -> str:
    parts = [f"{k}={row[k]:.6g}" for k in ("cosine", "snr_db") if isinstance(row.get(k), float)]
    return ("  " + " ".join(parts)) if parts else ""
