"""Clipping ranges [lo, hi] (lo <= 0 <= hi) from streamed statistics.

minmax      lo = min(x), hi = max(x). Exact, sensitive to outliers.
percentile  keep `p` percent of the values: the (100-p)% tail is cut, split evenly
            between both sides for signed data (symmetric: on |x|).
entropy     TensorRT's KL calibration on the |x| histogram (bin 0, the post-ReLU zero
            spike, replaced by bin 1): for each candidate threshold t = i * w (i >= 128
            bins), P = hist[:i] with the clipped mass added to its last bin, Q = hist[:i]
            merged into L levels (256 for uint8 data >= 0, else 128) and spread back evenly
            over the non-empty bins; pick the widest t minimising KL(P || Q).
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
ENTROPY_START = 128  # smallest candidate threshold, in bins (TensorRT's start_bin)
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


def entropy_threshold(hist: np.ndarray, width: float, levels: int, start: int = ENTROPY_START) -> float:
    """TensorRT's KL threshold on a magnitude histogram (pytorch-quantization's variant).

    For every candidate i (bins start..n): P = hist[:i] with the clipped mass added to its
    last bin; Q = hist[:i] merged into `levels` chunks (bin k in chunk floor(k*levels/i))
    and each chunk's mass spread evenly over its non-empty bins. The threshold is i * width
    for the i minimising KL(P||Q), the largest such i on ties.

    Bin 0 is replaced by bin 1 first, as TensorRT does: post-ReLU tensors are half exact
    zeros, and that spike, merged into Q's first chunk, would dominate KL and push the
    threshold down (clipping the large activations a network depends on).

    All candidates are scored at once from prefix sums: with S, Nz, HL the prefix sums
    of h, [h > 0] and h log h, each chunk c contributes sum_c * log(sum_c / nnz_c) to
    sum(p log q), so a candidate costs O(levels), not O(i).
    """
    h = np.asarray(hist, dtype=np.float64).copy()
    n = h.size
    if n <= 1 or not h.any():
        return n * width
    h[0] = h[1]
    total = h.sum()
    if total == 0:
        return n * width
    cands = np.arange(min(start, n), n + 1)
    kl = _kl_all(h, cands, levels, total)
    best = cands.size - 1 - int(np.argmin(kl[::-1]))  # last minimum: the widest range
    return float(cands[best]) * width


def _kl_all(h: np.ndarray, cands: np.ndarray, levels: int, total: float) -> np.ndarray:
    """KL(P_i || Q_i) for every candidate i in `cands` (see entropy_threshold)."""
    s = np.concatenate([[0.0], np.cumsum(h)])
    nz = np.concatenate([[0], np.cumsum(h > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        hl = np.concatenate([[0.0], np.cumsum(np.where(h > 0, h * np.log(h), 0.0))])
        # chunk boundaries ceil(j * i / levels), j = 0..levels, one row per candidate
        j = np.arange(levels + 1)
        bounds = (j[None, :] * cands[:, None] + levels - 1) // levels
        sums = s[bounds[:, 1:]] - s[bounds[:, :-1]]
        counts = nz[bounds[:, 1:]] - nz[bounds[:, :-1]]
        cross = np.where(sums > 0, sums * np.log(sums / np.maximum(counts, 1)), 0.0).sum(axis=1)
        last = cands - 1
        outliers = total - s[cands]
        # log q of the last kept bin: its chunk's mean over non-empty bins
        chunk = (last * levels) // cands
        rows = np.arange(cands.size)
        q_last = sums[rows, chunk] / np.maximum(counts[rows, chunk], 1)
        cross = cross + np.where(outliers > 0, outliers * np.log(q_last), 0.0)
        p_last = h[last] + outliers
        plogp = hl[last] + np.where(p_last > 0, p_last * np.log(p_last), 0.0)
        kl = (plogp - cross) / total + np.log(s[cands] / total)
    # clipped mass landing on an empty bin: Q has nothing there, KL is infinite
    kl[(outliers > 0) & (h[last] == 0)] = np.inf
    return np.where(np.isfinite(kl), kl, np.inf)


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
