"""One onnxruntime run over the calibration data, exposing every tensor that needs a range.

The model is copied with the wanted tensors added as graph outputs, a single session is
made, and each batch's outputs are folded into per-tensor TensorStats and dropped, so
memory is bounded by tensors x bins, not by the number of samples. A tqdm bar is shown
only when asked (ctx.progress) and stderr is a terminal.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from graphopt.calibration.histogram import TensorStats
from graphopt.ir.io import PROTOBUF_LIMIT, serialize

log = logging.getLogger(__name__)


def collect_statistics(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                       tensors: list[str], bins: int = 0, progress: bool = False,
                       threads: int = 0) -> dict[str, TensorStats]:
    """Stats of each float tensor in `tensors` over all feed dicts (bins=0: min/max only)."""
    stats = {name: TensorStats(bins) for name in tensors}
    if not tensors or not feeds:
        return stats
    session = _session(_exposed(model, tensors), threads)
    wanted = {i.name for i in session.get_inputs()}
    names = list(tensors)
    for feed in _bar(feeds, progress):
        values = session.run(names, {k: v for k, v in feed.items() if k in wanted})
        for name, value in zip(names, values):
            stats[name].update(value)
    log.info("calibration: %d tensors over %d batches", len(names), len(feeds))
    return stats


def _exposed(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in tensors:
        if name not in present:
            exposed.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return exposed


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # Basic rewrites (constant folding, redundant node removal) speed calibration up and
    # never change the value of an exposed tensor; layout/fusion passes are left off.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    if model.ByteSize() >= PROTOBUF_LIMIT:
        import tempfile
        from pathlib import Path
        path = Path(tempfile.mkdtemp()) / "calib.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="calib.data")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(serialize(model), options, providers=["CPUExecutionProvider"])


def _bar(feeds, progress: bool):
    if not (progress and sys.stderr.isatty()):
        return feeds
    try:
        from tqdm import tqdm
    except ImportError:
        return feeds
    return tqdm(feeds, desc="calibrating", unit="batch", leave=False)
