"""Running a model in onnxruntime for calibration and verification."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.ir.io import PROTOBUF_LIMIT, serialize

log = logging.getLogger(__name__)

# A valid but hostile model (a Conv padded by 2**20) can run for hours; bound every run.
RUN_TIMEOUT_S = float(os.environ.get("GRAPHOPT_RUN_TIMEOUT", "600"))


def make_session(model: onnx.ModelProto, threads: int = 0,
                 optimize: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session; graph optimizations off so the graph runs as written."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors surface as exceptions; keep stderr clean
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if model.ByteSize() >= PROTOBUF_LIMIT:
        import tempfile
        from pathlib import Path
        tmp = tempfile.mkdtemp()
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.data")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(serialize(model), options, providers=["CPUExecutionProvider"])


def run_model(model_or_session, feeds: dict[str, np.ndarray],
              output_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Outputs by name for one feed dict (extra feeds the model does not take are dropped)."""
    session = (model_or_session if isinstance(model_or_session, ort.InferenceSession)
               else make_session(model_or_session))
    wanted = {i.name for i in session.get_inputs()}
    names = output_names or [o.name for o in session.get_outputs()]
    options = ort.RunOptions()
    timer = threading.Timer(RUN_TIMEOUT_S, setattr, (options, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        values = session.run(names, {k: v for k, v in feeds.items() if k in wanted}, options)
    except Exception as err:
        from graphopt.errors import InputError

        if options.terminate:
            raise InputError(f"onnxruntime run stopped after {RUN_TIMEOUT_S:g} s "
                             "(set GRAPHOPT_RUN_TIMEOUT to allow longer runs)") from err
        if out_of_memory(err):  # a resource limit of this machine, not a bug: say so in one line
            raise InputError(f"onnxruntime ran out of memory running the model ({_first_line(err)}); "
                             "use smaller inputs (--inputs) or a machine with more memory") from err
        raise
    finally:
        timer.cancel()
    return dict(zip(names, values))


def out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, MemoryError) or any(
        marker in text for marker in ("Failed to allocate memory", "bad_alloc", "std::bad_alloc"))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][-160:]


def run_batches(model: onnx.ModelProto, feeds_list: list[dict[str, np.ndarray]],
                output_names: list[str] | None = None) -> list[dict[str, np.ndarray]]:
    session = make_session(model)
    return [run_model(session, feeds, output_names) for feeds in feeds_list]
