"""`graphopt optimize`: run a pipeline, verify, write the model and the report."""

from __future__ import annotations

import sys

from graphopt.cli.common import add_threshold_arguments, check_output_path, thresholds_from
from graphopt.errors import PassError, VerificationFailed

COMMAND = "optimize"
HELP = "optimize a model for a target with a pass pipeline, verified against the original"


def configure(parser) -> None:
    parser.add_argument("input", help="model: .onnx, or a framework file graphopt can import")
    parser.add_argument("-o", "--output", required=True, help="optimized .onnx to write")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow scikit-learn .pkl/.joblib sources (unpickling runs the file's code)")
    parser.add_argument("--input-shapes", help="for framework sources without shapes: name:1x3x224x224,...")
    parser.add_argument("--target", help="built-in target (cpu, gpu, npu, mcu) or a target TOML file")
    spec = parser.add_mutually_exclusive_group()
    spec.add_argument("--passes", help="inline pipeline, e.g. 'cleanup,fuse,quantize{calibration=entropy}'")
    spec.add_argument("--pipeline", help="pipeline TOML file")
    data = parser.add_argument_group("data")
    data.add_argument("--calibration-data", help=".npz with one array per input (axis 0 = samples)")
    data.add_argument("--inputs", help=".npz used for verification (default: calibration data or synthesized)")
    run = parser.add_argument_group("run")
    run.add_argument("--no-verify", action="store_true", help="skip numeric verification")
    run.add_argument("--report", action="append", default=[], help="write the report (.json, .md or .html); repeatable")
    run.add_argument("--dump-dir", help="write the model and step report after every pass")
    run.add_argument("--seed", type=int, default=0, help="seed for synthesized data and sampling")
    run.add_argument("--force", action="store_true", help="overwrite the output; write it even if verification fails")
    run.add_argument("--skip-failing", action="store_true", help="roll back a failing pass instead of stopping")
    run.add_argument("--quiet", action="store_true", help="print nothing on success")
    add_threshold_arguments(parser)


def run(args) -> int:
    import graphopt
    from graphopt.cli import show_progress
    from graphopt.report import render_markdown, write_report

    from graphopt.ir.io import external_data_files

    # the input's external data files are part of the input: never write over them either
    check_output_path(args.output, [args.input, *external_data_files(args.input)], args.force)
    for path in args.report:
        _check_report_path(path, args.force)
    try:
        result = graphopt.optimize(
            args.input, passes=args.passes, pipeline=args.pipeline, target=args.target,
            calibration_data=args.calibration_data, inputs=args.inputs, verify=not args.no_verify,
            thresholds=thresholds_from(args), seed=args.seed, dump_dir=args.dump_dir,
            skip_failing=args.skip_failing, progress=show_progress(), input_shapes=args.input_shapes, allow_pickle=args.allow_pickle,
            explain_layers=any(p.lower().endswith((".html", ".htm")) for p in args.report))
    except (PassError, VerificationFailed) as err:
        if err.report:
            for path in args.report:
                write_report({**err.report, "error": str(err)}, path)
        raise
    for path in args.report:
        write_report(result.report, path)
    if not args.quiet:
        sys.stdout.write(render_markdown(result.report))
    if not result.passed:
        failures = "; ".join(result.report["verification"].get("failures", [])) or "verification failed"
        if args.force:
            result.save(args.output, force=True)
        print(f"graphopt: verification failed: {failures}" + ("" if args.force else " (model not written)"),
              file=sys.stderr)
        return 2
    result.save(args.output, force=args.force)  # also guards OUT.data of a >2 GB model
    return 0


def _check_report_path(path, force) -> None:
    from pathlib import Path

    from graphopt.errors import InputError

    report = Path(path)
    if report.suffix.lower() not in (".json", ".md", ".markdown", ".html", ".htm"):
        raise InputError(f"{report}: report must end in .json, .md or .html")
    if not report.parent.exists():
        raise InputError(f"{report.parent}: report directory does not exist")
    if report.exists() and not force:
        raise InputError(f"{report}: report exists (use --force to overwrite)")
