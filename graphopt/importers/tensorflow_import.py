"""TensorFlow SavedModel directories and .tflite files -> ONNX via tf2onnx.

tf2onnx is an optional extra (`graphopt[tensorflow]`); it is run through its documented
command line (`python -m tf2onnx.convert --saved-model DIR | --tflite FILE --output F
--opset N`) in a subprocess, so TensorFlow's import-time side effects (threads, logging,
GPU probing) stay out of the graphopt process. No framework reference is returned: the
ONNX names tf2onnx gives (`serving_default_x:0`, ...) do not map reliably back onto
signature arguments, so verification against TensorFlow is left to the caller.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from graphopt.errors import InputError
from graphopt.importers.sources import ImportedModel
from graphopt.ir import load_model

log = logging.getLogger(__name__)

TF_EXTRA = "pip install 'graphopt[tensorflow]'"
TIMEOUT_S = 1800


def import_tensorflow(path, kind: str, opset: int = 17) -> ImportedModel:
    path = Path(path)
    missing = [name for name in ("tf2onnx", "tensorflow") if importlib.util.find_spec(name) is None]
    if missing:  # tf2onnx imports tensorflow for SavedModel and TFLite alike
        raise InputError(f"{path}: importing TensorFlow/TFLite models needs tf2onnx and tensorflow; "
                         f"missing: {', '.join(missing)} ({TF_EXTRA})")
    source_flag = "--tflite" if kind == "tflite" else "--saved-model"
    with tempfile.TemporaryDirectory(prefix="graphopt-tf2onnx-") as tmp:
        target = Path(tmp) / "model.onnx"
        command = [sys.executable, "-m", "tf2onnx.convert", source_flag, str(path),
                   "--output", str(target), "--opset", str(opset)]
        log.info("running %s", " ".join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as err:
            raise InputError(f"{path}: tf2onnx did not finish in {TIMEOUT_S} s") from err
        if done.returncode != 0 or not target.is_file():
            lines = [ln for ln in (done.stderr or "").splitlines() if ln.strip()]
            raise InputError(f"{path}: tf2onnx failed: {lines[-1] if lines else f'exit {done.returncode}'}")
        model = load_model(target)
    framework = "tflite" if kind == "tflite" else "tensorflow"
    imported = ImportedModel(model, framework, None, None, "tf2onnx")
    imported.notes.append("no TensorFlow reference run: verify against TensorFlow separately")
    return imported
