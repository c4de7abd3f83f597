"""Streaming per-tensor statistics with memory bounded by the number of bins.

For every tensor we keep min, max, the count and one signed histogram over [-R, R) with
2 * bins bins of width R / bins: bin k counts x in [(k - bins) w, (k - bins + 1) w).
`pos` (bins from 0 up) and `neg` (bins below 0, by |x|) are views of it, and `pos + neg`
is the |x| histogram TensorRT's entropy calibration works on.

R is not known before the data is seen, so it grows by doubling: when a batch holds a
magnitude >= R, R becomes R * 2^k and every 2^k adjacent bins merge into one. The merge is
exact (bin edges of the coarse grid are edges of the fine grid, on both sides of 0), so
one pass over the data is enough and the resolution is within a factor 2 of a histogram
built with the final R.

Speed: a bin index is floor(x * bins / R) + bins, computed in float32 on chunks of the
tensor and counted with np.bincount (several times faster than np.histogram, which sorts
or searches edges); chunks bound the temporaries to a few MB whatever the tensor size.
"""

from __future__ import annotations

import math

import numpy as np

CHUNK = 1 << 20  # elements per histogram step: temporaries stay ~12 MB


class TensorStats:
    """min / max / count and (optionally) the signed histogram of one tensor."""

    def __init__(self, bins: int = 0):
        self.bins = bins
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.range = 0.0
        self.hist = np.zeros(2 * bins, dtype=np.int64) if bins else None

    @property
    def pos(self) -> np.ndarray | None:
        """Counts of 0 <= x < R by bins of x (a view)."""
        return None if self.hist is None else self.hist[self.bins:]

    @property
    def neg(self) -> np.ndarray | None:
        """Counts of -R <= x < 0 by bins of |x|, nearest 0 first (a view)."""
        return None if self.hist is None else self.hist[self.bins - 1::-1]

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        x = x.reshape(-1)
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # min/max see every NaN and inf
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        if self.bins:
            self._grow(max(-lo, hi))
            self._add(x)

    def merge_range(self, lo: float, hi: float, count: int) -> None:
        """Fold in the finite min / max / element count of values seen elsewhere (min/max
        statistics reduced inside the graph); histograms, if any, are not touched."""
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += count

    def _grow(self, magnitude: float) -> None:
        if self.range == 0.0:
            # floor 1e-30: bins / R must stay finite in float32
            self.range = max(magnitude * 1.0001, 1e-30) if magnitude > 0 else 1e-8
            return
        if magnitude < self.range:
            return
        factor = 2 ** math.ceil(math.log2(magnitude / self.range) + 1e-12)
        while self.range * factor <= magnitude:  # round-off in log2
            factor *= 2
        self.hist = _merge(self.hist, int(factor))
        self.range *= factor

    def _add(self, x: np.ndarray) -> None:
        """Count x (|x| < R) into the signed histogram."""
        bins = self.bins
        scale = np.float32(bins / self.range)
        counts = np.zeros(2 * bins + 1, dtype=np.int64)
        for start in range(0, x.size, CHUNK):
            t = np.multiply(x[start:start + CHUNK], scale)
            t += bins  # >= 0 since |x| < R, so truncation is floor
            counts += np.bincount(t.astype(np.intp), minlength=2 * bins + 1)
        counts[-2] += counts[-1]  # x * scale rounded up to exactly `bins` in float32
        self.hist += counts[:-1]

    def bin_width(self) -> float:
        return self.range / self.bins

    def magnitude_histogram(self) -> np.ndarray:
        return self.pos + self.neg


def _merge(hist: np.ndarray, factor: int) -> np.ndarray:
    """Signed histogram over [-R * factor, R * factor) from one over [-R, R).

    Each half merges `factor` bins at a time outward from 0, so bin edges stay aligned
    with 0 and the result is exact.
    """
    bins = hist.size // 2
    out = np.zeros_like(hist)
    pos, neg = hist[bins:], hist[bins - 1::-1]
    out[bins:] = _merge_half(pos, factor)
    out[bins - 1::-1] = _merge_half(neg, factor)
    return out


def _merge_half(half: np.ndarray, factor: int) -> np.ndarray:
    bins = half.size
    out = np.zeros_like(half)
    if factor >= bins:
        out[0] = half.sum()
        return out
    merged = np.add.reduceat(half, np.arange(0, bins, factor))
    out[:merged.size] = merged
    return out
