"""Calibration data readers: every source becomes an iterator of feed dicts (a batch each).

Accepted sources: a list/iterable of {input name: array} dicts, a path to an .npz file
(axis 0 = samples, read through graphopt.verify.load_npz), or None, in which case seeded
synthetic inputs are made and a loud warning is logged: ranges calibrated on random
data describe random data, not the deployment distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from graphopt.verify import load_npz, synthesize_inputs

log = logging.getLogger(__name__)

SYNTHETIC_NOTE = "calibrated on synthetic data: ranges describe random inputs, pass real calibration data"
SYNTHETIC_COUNT = 8


def calibration_feeds(model: onnx.ModelProto, data, max_samples: int | None = None,
                      seed: int = 0) -> tuple[list[dict[str, np.ndarray]], bool]:
    """(feed dicts capped at `max_samples` samples, whether they were synthesized)."""
    synthetic = data is None or (isinstance(data, (list, tuple)) and not data)
    if synthetic:
        log.warning("quantize: NO CALIBRATION DATA - calibrating on %d synthetic random inputs; "
                    "activation ranges will not match real data", SYNTHETIC_COUNT)
        feeds: Iterable = synthesize_inputs(model, count=SYNTHETIC_COUNT, seed=seed)
    elif isinstance(data, (str, Path)):
        feeds = load_npz(data, model)
    else:
        feeds = data
    return list(_capped(feeds, max_samples)), synthetic


def _capped(feeds: Iterable[dict], max_samples: int | None) -> Iterator[dict]:
    """Yield feed dicts until `max_samples` samples (axis 0 of the batch) were given."""
    seen = 0
    for feed in feeds:
        if max_samples and seen >= max_samples:
            return
        n = batch_size(feed)
        if max_samples and seen + n > max_samples:
            keep = max_samples - seen
            feed = {k: (v[:keep] if np.ndim(v) else v) for k, v in feed.items()}
            n = keep
        seen += n
        yield feed


def batch_size(feed: dict[str, np.ndarray]) -> int:
    first = next(iter(feed.values()), None)
    return int(np.shape(first)[0]) if first is not None and np.ndim(first) else 1


def count_samples(feeds: list[dict[str, np.ndarray]]) -> int:
    return sum(batch_size(f) for f in feeds)
