"""The quickstart demo: optimize the bundled digits CNN for every built-in target.

Prints, per target, the default pipeline's effect: nodes, weight bytes, estimated
latency and energy before -> after, whether it fits the device, and the test accuracy of
the original and optimized model on scikit-learn's digits (held-out split).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import graphopt
from graphopt.targets import builtin_targets
from graphopt.verify import run_model

HERE = Path(__file__).resolve().parent


def accuracy(model, data) -> float:
    logits = run_model(model, {"input": data["input"]})["logits"]
    return float((logits.argmax(axis=1) == data["label"]).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(HERE / "digits_cnn.onnx"))
    parser.add_argument("--out-dir", default=str(HERE / "cache" / "demo"))
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = dict(np.load(HERE / "digits_test.npz"))
    rows = []
    for target in builtin_targets():
        result = graphopt.optimize(args.model, target=target, calibration_data=HERE / "digits_calib.npz",
                                   inputs=HERE / "digits_test.npz")
        result.save(out_dir / f"digits_cnn.{target}.onnx")
        before, after = result.report["cost"]["before"], result.report["cost"]["after"]
        rows.append([target, result.report["pipeline"],
                     f"{result.report['input']['nodes']} -> {result.report['output']['nodes']}",
                     f"{before['weight_bytes']} -> {after['weight_bytes']}",
                     f"{before['latency_ms']:.4f} -> {after['latency_ms']:.4f}",
                     f"{before['energy_mj']:.2e} -> {after['energy_mj']:.2e}",
                     "yes" if after.get("fits") else "no",
                     f"{accuracy(result.original, test):.4f} -> {accuracy(result.model, test):.4f}",
                     f"{result.report['verification'].get('cosine', 1.0):.5f}"])
    header = ["target", "pipeline", "nodes", "weight bytes", "latency ms (est.)", "energy mJ (est.)",
              "fits", "test accuracy", "cosine"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\noptimized models written to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
