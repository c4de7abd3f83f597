"""Running a model with its intermediate tensors exposed, and streaming error metrics.

Every node output of the top-level graph becomes a graph output (a name-only
ValueInfo: onnxruntime infers the type), so one session run yields all activations.
Metrics accumulate over batches instead of keeping every activation of every sample:
for reference r and candidate c (float64, flattened, finite entries only)

    cosine  = <r, c> / (|r| |c|)
    snr_db  = 10 log10(|r|^2 / |r - c|^2)           (capped at SNR_CAP_DB)
    max_abs = max |r - c|,   rel = |r - c| / |r|

need only the running sums <r,c>, |r|^2, |c|^2, |r-c|^2 and maxima, so memory stays one
batch of activations whatever the number of samples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from graphopt.errors import InputError
from graphopt.ir import clone

log = logging.getLogger(__name__)

# float32 round-off between two equivalent graphs sits near 120-140 dB; anything at or above
# this is "no error", so SNR drops measured from it stay finite and comparable.
SNR_CAP_DB = 140.0


def expose_intermediates(model: onnx.ModelProto, names: list[str] | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """Copy of `model` whose graph outputs include `names` (default: every node output)."""
    exposed = clone(model)
    present = {o.name for o in exposed.graph.output}
    produced = [o for node in exposed.graph.node for o in node.output if o]
    wanted = produced if names is None else [n for n in names if n in set(produced) | present]
    added = []
    for name in wanted:
        if name not in present:
            exposed.graph.output.append(helper.make_empty_tensor_value_info(name))
            present.add(name)
        added.append(name)
    return exposed, added


def run_exposed(model: onnx.ModelProto, feeds_list: list[dict], names: list[str], label: str = "given"):
    """Yield one {name: array} dict per feed dict, for the exposed `names` that exist."""
    from graphopt.verify import make_session, run_model

    exposed, fetch = expose_intermediates(model, names)
    try:
        session = make_session(exposed)
    except Exception as err:  # onnxruntime raises several types; the user's model is at fault
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise InputError(f"onnxruntime cannot load the {label} model: {first}") from err
    available = {o.name for o in session.get_outputs()}
    fetch = [n for n in fetch if n in available]
    for feeds in feeds_list:
        yield run_model(session, feeds, fetch)


@dataclass
class ErrorAccumulator:
    """Running sums for cosine / SNR / max-abs between a reference and a candidate tensor."""

    dot: float = 0.0
    ref_sq: float = 0.0
    cand_sq: float = 0.0
    err_sq: float = 0.0
    max_abs: float = 0.0
    ref_max: float = 0.0
    count: int = 0
    nonfinite: int = 0
    shape_mismatch: bool = False
    shape: tuple = ()

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if np.shape(ref) != np.shape(cand):
            self.shape_mismatch = True
            self.shape = (tuple(np.shape(ref)), tuple(np.shape(cand)))
            return
        self.shape = tuple(np.shape(ref))
        r = np.asarray(ref, dtype=np.float64).reshape(-1)
        c = np.asarray(cand, dtype=np.float64).reshape(-1)
        finite = np.isfinite(r) & np.isfinite(c)
        # NaN/Inf the candidate has beyond the reference's are counted, never compared
        self.nonfinite += max(0, int((~np.isfinite(c)).sum()) - int((~np.isfinite(r)).sum()))
        r, c = r[finite], c[finite]
        d = r - c
        self.dot += float(r @ c)
        self.ref_sq += float(r @ r)
        self.cand_sq += float(c @ c)
        self.err_sq += float(d @ d)
        if d.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
            self.ref_max = max(self.ref_max, float(np.max(np.abs(r))))
        self.count += int(r.size)

    def metrics(self) -> dict:
        if self.shape_mismatch:
            return {"shape_mismatch": [list(s) for s in self.shape]}
        return {"cosine": self.cosine(), "snr_db": self.snr_db(), "max_abs_error": self.max_abs,
                "relative_error": math.sqrt(self.err_sq / self.ref_sq) if self.ref_sq > 0 else
                (0.0 if self.err_sq == 0 else float("inf")),
                "nonfinite": self.nonfinite, "elements": self.count, "shape": list(self.shape)}

    def cosine(self) -> float:
        if self.ref_sq == 0 and self.cand_sq == 0:
            return 1.0
        if self.ref_sq == 0 or self.cand_sq == 0:
            return 0.0
        return float(np.clip(self.dot / math.sqrt(self.ref_sq * self.cand_sq), -1.0, 1.0))

    def snr_db(self) -> float:
        if self.err_sq == 0:
            return SNR_CAP_DB
        if self.ref_sq == 0:
            return -SNR_CAP_DB
        return float(min(SNR_CAP_DB, 10 * math.log10(self.ref_sq / self.err_sq)))


def is_float_array(value) -> bool:
    return isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)


def count_samples(feeds_list: list[dict]) -> int:
    """Samples in a list of feed dicts (each may hold a batch along axis 0)."""
    total = 0
    for feeds in feeds_list:
        first = next(iter(feeds.values()), None)
        total += int(first.shape[0]) if first is not None and np.ndim(first) else 1
    return total
