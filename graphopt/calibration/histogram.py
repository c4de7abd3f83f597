"""Streaming per-tensor statistics with memory bounded by the number of bins.

For every tensor we keep min, max, the count, and two histograms of magnitudes over the
same range [0, R): `pos` counts x > 0 by x, `neg` counts x < 0 by -x (zeros go to pos
bin 0). Bin width is R / bins. Together they are a signed histogram, and `pos + neg` is
the |x| histogram TensorRT's entropy calibration works on.

R is not known before the data is seen, so it grows by doubling: when a batch holds a
magnitude >= R, R becomes R * 2^k and every 2^k adjacent bins merge into one. The merge is
exact (bin edges of the coarse grid are edges of the fine grid), so one pass over the data
is enough and the resolution is within a factor 2 of a histogram built with the final R.
"""

from __future__ import annotations

import math

import numpy as np


class TensorStats:
    """min / max / count and (optionally) the two magnitude histograms of one tensor."""

    def __init__(self, bins: int = 0):
        self.bins = bins
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.range = 0.0
        self.pos = np.zeros(bins, dtype=np.float64) if bins else None
        self.neg = np.zeros(bins, dtype=np.float64) if bins else None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        x = x.astype(np.float32, copy=False).ravel()
        finite = x[np.isfinite(x)] if not np.isfinite(x).all() else x
        if finite.size == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += finite.size
        if self.bins:
            self._grow(max(abs(lo), abs(hi)))
            self._add(finite)

    def _grow(self, magnitude: float) -> None:
        if self.range == 0.0:
            self.range = magnitude * 1.0001 if magnitude > 0 else 1e-8
            return
        if magnitude < self.range:
            return
        factor = 2 ** math.ceil(math.log2(magnitude / self.range) + 1e-12)
        while self.range * factor <= magnitude:  # round-off in log2
            factor *= 2
        self.pos = _merge(self.pos, int(factor))
        self.neg = _merge(self.neg, int(factor))
        self.range *= factor

    def _add(self, x: np.ndarray) -> None:
        scale = self.bins / self.range
        idx = np.minimum((np.abs(x) * scale).astype(np.int64), self.bins - 1)
        negative = x < 0
        self.pos += np.bincount(idx[~negative], minlength=self.bins)
        if negative.any():
            self.neg += np.bincount(idx[negative], minlength=self.bins)

    def bin_width(self) -> float:
        return self.range / self.bins

    def magnitude_histogram(self) -> np.ndarray:
        return self.pos + self.neg


def _merge(hist: np.ndarray, factor: int) -> np.ndarray:
    """Histogram over [0, R * factor) from one over [0, R): merge `factor` bins at a time."""
    bins = hist.size
    if factor >= bins:
        out = np.zeros(bins)
        out[0] = hist.sum()
        return out
    out = np.zeros(bins)
    merged = hist.reshape(bins // factor, factor).sum(axis=1) if bins % factor == 0 else \
        np.add.reduceat(hist, np.arange(0, bins, factor))
    out[:merged.size] = merged
    return out
