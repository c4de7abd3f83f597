"""Clipping ranges [lo, hi] (lo <= 0 <= hi) from streamed statistics.

minmax      lo = min(x), hi = max(x). Exact, sensitive to outliers.
percentile  keep `p` percent of the values: the (100-p)% tail is cut, split evenly
            between both sides for signed data (symmetric: on |x|).
entropy     TensorRT's KL calibration on the |x| histogram: for each candidate threshold
            t = i * w (i >= L bins, L = number of quantized levels), P = hist[:i] with the
            clipped mass added to its last bin, Q = hist[:i] merged into L levels and spread
            back evenly over the non-empty bins; pick the t minimising KL(P || Q).
mse         minimise the expected squared quantization error of the histogram:
            E(t) = sum_inside n * s^2 / 12 (uniform rounding noise, s = scale for t)
                 + sum_outside n * (|x| - t)^2 (clipping), over candidate ranges
            [max(lo, -t), min(hi, t)], t on a geometric grid up to max |x|.
All methods read the same TensorStats, so the data is run once whatever the method.
"""

from __future__ import annotations

import numpy as np

from graphopt.calibration.histogram import TensorStats

METHODS = ("minmax", "percentile", "entropy", "mse")
MAX_ENTROPY_CANDIDATES = 128  # evenly spaced thresholds; finer grids moved no result here
MSE_CANDIDATES = 200


def compute_range(stats: TensorStats, method: str, *, symmetric: bool, qmin: int, qmax: int,
                  percentile: float = 99.99) -> tuple[float, float]:
    """(lo, hi) for one tensor; always contains 0 so that zero is exactly representable."""
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    if stats.count == 0 or not np.isfinite(lo) or not np.isfinite(hi):
        return 0.0, 0.0
    if method == "minmax" or stats.hist is None or hi - lo == 0:
        return lo, hi
    if method == "percentile":
        return _percentile(stats, percentile, symmetric, lo, hi)
    if method == "entropy":
        levels = (qmax - qmin + 1) if (lo == 0 and not symmetric) else (qmax - qmin + 1) // 2
        t = entropy_threshold(stats.magnitude_histogram(), stats.bin_width(), levels)
        return max(lo, -t), min(hi, t)
    if method == "mse":
        return _mse(stats, symmetric, qmin, qmax, lo, hi)
    raise ValueError(f"unknown calibration method {method!r}")


def _signed(stats: TensorStats) -> tuple[np.ndarray, np.ndarray]:
    """Counts and left edges of the signed histogram over [-R, R)."""
    return stats.hist.astype(np.float64), np.arange(-stats.bins, stats.bins) * stats.bin_width()


def _percentile(stats, p, symmetric, lo, hi):
    w = stats.bin_width()
    if symmetric or lo == 0:
        hist = stats.magnitude_histogram()
        cdf = np.cumsum(hist) / hist.sum()
        t = (int(np.searchsorted(cdf, p / 100.0)) + 1) * w
        return max(lo, -t), min(hi, t)
    counts, edges = _signed(stats)
    cdf = np.cumsum(counts) / counts.sum()
    tail = (100.0 - p) / 200.0
    low = edges[int(np.searchsorted(cdf, tail))]
    high = edges[min(int(np.searchsorted(cdf, 1.0 - tail)), counts.size - 1)] + w
    return max(lo, min(low, 0.0)), min(hi, max(high, 0.0))


def entropy_threshold(hist: np.ndarray, width: float, levels: int) -> float:
    """TensorRT KL threshold on a magnitude histogram; the full range if it is short."""
    bins = hist.size
    if bins <= levels:
        return bins * width
    total = hist.sum()
    stride = max(1, (bins - levels) // MAX_ENTROPY_CANDIDATES)
    candidates = list(range(levels, bins + 1, stride))
    if candidates[-1] != bins:
        candidates.append(bins)
    suffix = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])
    best_i, best_kl = bins, np.inf
    for i in candidates:
        kl = _kl_at(hist[:i], suffix[i], levels, total)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i * width


def _kl_at(h: np.ndarray, outliers: float, levels: int, total: float) -> float:
    i = h.size
    p = h.copy()
    p[-1] += outliers  # clipped values saturate into the last bin
    starts = (np.arange(levels) * i) // levels
    nonzero = h > 0
    sums = np.add.reduceat(h, starts)
    counts = np.add.reduceat(nonzero.astype(np.float64), starts)
    chunk = np.repeat(np.arange(levels), np.diff(np.append(starts, i)))
    q = np.where(nonzero, (sums / np.maximum(counts, 1))[chunk], 0.0)
    mask = p > 0
    p = p[mask] / total
    q = q[mask] / max(q.sum(), 1e-30)
    q = np.where(q > 0, q, 1e-12)  # P has mass where Q has none: heavy, finite penalty
    return float(np.sum(p * np.log(p / q)))


def _mse(stats, symmetric, qmin, qmax, lo, hi):
    counts, edges = _signed(stats)
    centers = edges + stats.bin_width() / 2
    keep = counts > 0
    counts, centers = counts[keep], centers[keep]
    amax = max(-lo, hi)
    # geometric grid: heavy tails put the optimum far below the max
    t = amax * np.geomspace(1e-3, 1.0, MSE_CANDIDATES)[:, None]
    los, his = np.maximum(lo, -t), np.minimum(hi, t)
    if symmetric:
        los, his = -t, t
    scale = (his - los) / (qmax - qmin)
    clipped = np.clip(centers[None, :], los, his)
    inside = (centers[None, :] >= los) & (centers[None, :] <= his)
    err = (counts * ((centers - clipped) ** 2 + inside * scale ** 2 / 12.0)).sum(axis=1)
    best = int(np.argmin(err))
    return float(los[best, 0]), float(his[best, 0])
