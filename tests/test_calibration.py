"""Calibration engine: streaming histograms and the four range methods on known data."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, tensor
from onnx import helper

from graphopt.calibration import (
    TensorStats,
    calibration_feeds,
    collect_statistics,
    compute_range,
)
from graphopt.calibration.ranges import entropy_threshold

U8 = dict(qmin=0, qmax=255)


def _stats(x, bins=2048, chunks=1):
    s = TensorStats(bins)
    for part in np.array_split(np.asarray(x, np.float32), chunks):
        s.update(part)
    return s


def test_streaming_histogram_merges_exactly_when_the_range_grows():
    rng = np.random.default_rng(0)
    small, large = rng.uniform(-1, 1, 5000), rng.uniform(-3, 3, 5000)
    s = TensorStats(256)
    s.update(small)
    s.update(large)
    direct = TensorStats(256)
    direct.range = s.range
    direct._add(np.concatenate([small, large]).astype(np.float32))
    assert s.range >= 3 and s.count == 10000
    assert np.abs(s.pos - direct.pos).sum() <= 2 and np.abs(s.neg - direct.neg).sum() <= 2
    assert s.pos.size == 256  # memory bounded by bins, not samples


def test_minmax_is_exact_over_batches():
    x = np.linspace(-2.5, 7.25, 1001)
    s = _stats(x, bins=0, chunks=7)
    assert compute_range(s, "minmax", symmetric=False, **U8) == (-2.5, 7.25)


def test_minmax_range_contains_zero():
    s = _stats(np.linspace(1.0, 3.0, 50), bins=0)
    assert compute_range(s, "minmax", symmetric=False, **U8) == (0.0, 3.0)


def test_percentile_of_a_known_array():
    x = np.arange(100000, dtype=np.float32) / 100000.0  # uniform on [0, 1)
    s = _stats(x, chunks=5)
    lo, hi = compute_range(s, "percentile", symmetric=False, percentile=99.0, **U8)
    assert lo == 0.0
    assert hi == pytest.approx(np.percentile(x, 99.0), abs=2 * s.bin_width())


def test_percentile_signed_cuts_both_tails():
    x = np.random.default_rng(1).standard_normal(200000)
    s = _stats(x)
    lo, hi = compute_range(s, "percentile", symmetric=False, percentile=99.0, **U8)
    assert lo == pytest.approx(np.percentile(x, 0.5), abs=0.02)
    assert hi == pytest.approx(np.percentile(x, 99.5), abs=0.02)


def test_entropy_clips_a_long_tail_but_keeps_the_bulk():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(100000), [60.0]])
    lo, hi = compute_range(_stats(x), "entropy", symmetric=True, qmin=-128, qmax=127)
    assert 2.0 < hi < 20.0 and -hi <= lo < -2.0


def test_entropy_threshold_is_full_range_for_uniform_data():
    hist = np.ones(2048)
    assert entropy_threshold(hist, 1.0, 128) >= 1900


def test_mse_keeps_uniform_range_and_cuts_outliers():
    rng = np.random.default_rng(3)
    uniform = rng.uniform(0, 1, 100000)
    _, hi = compute_range(_stats(uniform), "mse", symmetric=False, **U8)
    assert hi > 0.95
    tailed = rng.laplace(size=200000)  # heavy tails: clipping them lowers the total error
    lo, hi = compute_range(_stats(tailed), "mse", symmetric=False, **U8)
    assert 2.0 < hi < 0.95 * tailed.max() and 0.95 * tailed.min() < lo < -2.0


def test_readers_cap_samples_and_flag_synthetic_data():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["N", 4])], [tensor("y", ["N", 4])])
    data = [{"x": np.ones((8, 4), np.float32)} for _ in range(3)]
    feeds, synthetic = calibration_feeds(model, data, max_samples=10)
    assert not synthetic and [f["x"].shape[0] for f in feeds] == [8, 2]
    feeds, synthetic = calibration_feeds(model, None)
    assert synthetic and feeds and feeds[0]["x"].dtype == np.float32


def test_collector_runs_once_and_streams_intermediates():
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
                       [tensor("x", ["N", 4])], [tensor("y", ["N", 4])])
    feeds = [{"x": np.full((2, 4), v, np.float32)} for v in (-1.0, 3.0, 2.0)]
    stats = collect_statistics(model, feeds, ["r", "x"], bins=64)
    assert (stats["r"].min, stats["r"].max) == (0.0, 3.0)
    assert (stats["x"].min, stats["x"].max) == (-1.0, 3.0)
    assert stats["x"].count == 24
