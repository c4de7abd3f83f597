"""`graphopt import`: convert a framework model to ONNX, verified against the framework."""

from __future__ import annotations

from pathlib import Path

COMMAND = "import"
HELP = ("convert a PyTorch (.pt2, TorchScript .pt), scikit-learn (.pkl/.joblib), TensorFlow (SavedModel, "
        ".tflite) or HuggingFace model to ONNX, checked against the framework's own outputs")


def configure(parser) -> None:
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow scikit-learn .pkl/.joblib sources (unpickling runs the file's code)")
    from graphopt.importers import DEFAULT_OPSET

    parser.add_argument("source", help="model file or directory")
    parser.add_argument("-o", "--output", required=True, help="output .onnx path")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}, the dynamo exporter's own)")
    parser.add_argument("--input-shapes", metavar="SPEC",
                        help="e.g. input:1x3x224x224 or ids:batch=1xseq=16:int64 (needed for TorchScript; "
                             "name=size marks a dynamic dim)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthesized verification inputs")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with the framework")
    parser.add_argument("--force", action="store_true",
                        help="overwrite OUTPUT, and write it even when verification fails")


def run(args) -> int:
    from graphopt.cli.common import check_output_path
    from graphopt.errors import InputError
    from graphopt.importers import detect, import_source, verify_import
    from graphopt.importers.sources import unsupported
    from graphopt.importers.verify import verification_feeds
    from graphopt.ir import save_model

    source = Path(args.source)
    if not source.exists():
        raise InputError(f"{source}: no such file or directory")
    if detect(source) is None:
        raise unsupported(source)  # before any output check: the format error is the useful one
    check_output_path(args.output, [args.source], args.force)
    imported = import_source(args.source, input_shapes=args.input_shapes, opset=args.opset,
                             allow_pickle=args.allow_pickle)
    result = None
    if not args.no_verify:
        result = verify_import(imported, verification_feeds(imported, seed=args.seed))
    failed = result is not None and result["passed"] is False
    if not failed or args.force:
        save_model(imported.model, args.output, force=True)
    print(_summary(args, imported, result, written=not failed or args.force))
    return 2 if failed else 0


def _summary(args, imported, result, written: bool) -> str:
    model = imported.model
    opset = {o.domain: o.version for o in model.opset_import}.get("", "?")
    inits = {t.name for t in model.graph.initializer}
    inputs = ",".join(v.name for v in model.graph.input if v.name not in inits)
    where = f"-> {args.output}" if written else f"(not written: {args.output})"
    head = (f"{Path(args.source).name} [{imported.framework} via {imported.exporter}] {where}: "
            f"{len(model.graph.node)} nodes, opset {opset}, inputs {inputs}")
    if result is None:
        return head + ", not verified"
    if result["passed"] is None:
        return head + f", not verified ({'; '.join(imported.notes) or 'no framework reference'})"
    verdict = "PASSED" if result["passed"] else "FAILED"
    if result["max_abs_error"] is None:
        return head + f", vs {result['framework']}: {verdict} ({result.get('reason', '')})"
    return (head + f", vs {result['framework']}: max_abs_error={result['max_abs_error']:.3g} "
            f"cosine={result['cosine']:.8f} {verdict}")
