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
    assert s.pos.size == 256 and s.hist.size == 512  # memory bounded by bins, not samples


def test_signed_histogram_bins_against_hand_counts():
    s = TensorStats(4)
    s.update(np.array([1.0, -1.0, 0.0, 0.6, -0.25, 0.99], np.float32))  # R = 1.0001, w ~ 0.25
    # bins of x over [-R, R): [-1,-.75) [-.75,-.5) [-.5,-.25) [-.25,0) [0,.25) [.25,.5) [.5,.75) [.75,1)
    assert s.hist.tolist() == [1, 0, 0, 1, 1, 0, 1, 2]
    assert s.pos.tolist() == [1, 0, 1, 2] and s.neg.tolist() == [1, 0, 0, 1]
    s.update(np.array([-3.5], np.float32))  # R x4: every 4 bins of each half merge outward from 0
    assert s.range == pytest.approx(4.0004) and s.hist.tolist() == [1, 0, 0, 2, 4, 0, 0, 0]


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


def _entropy_reference(hist, levels, start=128):
    """TensorRT's KL calibration written out literally (pytorch-quantization's loop)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    best, best_kl = None, np.inf
    for i in range(start, bins.size + 1):
        chunk = (np.arange(i) * levels) // i  # bin k -> quantized level
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        q = np.zeros(i)
        for c in range(levels):
            members = (chunk == c) & (bins[:i] > 0)
            if members.any():
                q[members] = bins[:i][chunk == c].sum() / members.sum()
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.sum(np.where(p > 0, p * np.log(p / q), 0.0))
        if kl <= best_kl:  # ties: the wider range
            best, best_kl = i, kl
    return best


@pytest.mark.parametrize("levels", [128, 256])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_threshold_matches_the_literal_kl_loop(levels, seed):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal(50000)) ** (1 + seed * 0.4)
    x[rng.random(x.size) < 0.5] = 0  # a post-ReLU zero spike
    hist, _ = np.histogram(x, bins=400, range=(0, x.max() * 1.0001))
    if seed == 2:
        hist[250:260] = 0  # empty bins: clipping onto them is infinitely bad
    assert entropy_threshold(hist, 1.0, levels) == _entropy_reference(hist, levels)


def test_entropy_ignores_the_relu_zero_spike():
    rng = np.random.default_rng(4)
    tail = np.abs(rng.standard_normal(100000))
    relu = np.concatenate([tail, np.zeros(300000)])  # 75 % exact zeros
    lo, hi = compute_range(_stats(relu), "entropy", symmetric=False, **U8)
    _, hi_tail = compute_range(_stats(tail), "entropy", symmetric=False, **U8)
    assert lo == 0.0 and hi == pytest.approx(hi_tail, rel=0.02)
    assert 0.6 * tail.max() < hi <= tail.max()  # clips the last of the tail, keeps the bulk


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


def _two_relus():
    return make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
                      [tensor("x", ["N", 4])], [tensor("y", ["N", 4])])


def test_minmax_reduced_in_graph_equals_numpy():
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.standard_normal((3, 4)).astype(np.float32) * k} for k in (1, 5, 2)]
    stats = collect_statistics(_two_relus(), feeds, ["r", "x", "y"], bins=0)
    x = np.concatenate([f["x"] for f in feeds])
    assert (stats["x"].min, stats["x"].max, stats["x"].count) == (x.min(), x.max(), x.size)
    assert (stats["r"].min, stats["r"].max) == (0.0, x.max())
    assert (stats["y"].min, stats["y"].max) == (-x.max(), 0.0)


def test_relu_output_min_is_recorded_as_zero_and_ranges_are_unchanged():
    feeds = [{"x": np.array([[0.5, 2.0, 1.0, 3.0]], np.float32)}]  # no value of r is 0
    reduced = collect_statistics(_two_relus(), feeds, ["r"], bins=0)["r"]
    exposed = collect_statistics(_two_relus(), feeds, ["r"], bins=16)["r"]
    assert (reduced.min, reduced.max, reduced.count) == (0.0, 3.0, 4) and exposed.min == 0.5
    assert compute_range(reduced, "minmax", symmetric=False, **U8) == compute_range(exposed, "minmax",
                                                                                   symmetric=False, **U8)


def test_minmax_skips_infinities_and_nans():
    x = np.array([[0.5, -np.inf, 2.0, np.nan], [1.0, -3.0, np.inf, 0.0]], np.float32)
    stats = collect_statistics(_two_relus(), [{"x": x}], ["x", "r"], bins=0)
    assert (stats["x"].min, stats["x"].max) == (-3.0, 2.0)  # the finite values only
    assert (stats["r"].min, stats["r"].max) == (0.0, 2.0)


def test_batches_split_into_small_runs_give_the_same_statistics(monkeypatch):
    from graphopt.calibration import collector

    rng = np.random.default_rng(6)
    feeds = [{"x": rng.standard_normal((8, 4)).astype(np.float32)} for _ in range(3)]
    feeds[0]["x"][0, 0] = 9.0  # the largest |x| in the first sample: both ways start with the same R
    whole = collect_statistics(_two_relus(), feeds, ["r", "x"], bins=64)
    monkeypatch.setattr(collector, "RUN_BUDGET", 96)  # r and x: 32 bytes per sample, 3 samples a run
    runs = []
    real = collector._Runs.outputs

    def counting(self, names, feed):
        for values in real(self, names, feed):
            runs.append(values[0].shape[0])
            yield values

    monkeypatch.setattr(collector._Runs, "outputs", counting)
    split = collect_statistics(_two_relus(), feeds, ["r", "x"], bins=64)
    assert runs == [1, 3, 3, 1] + [3, 3, 2] * 2  # one sample first, then as many as fit
    for name in ("r", "x"):
        a, b = whole[name], split[name]
        assert (a.min, a.max, a.count) == (b.min, b.max, b.count)
        assert a.range == b.range and (a.hist == b.hist).all()


def test_a_model_with_a_baked_in_batch_is_calibrated_on_whole_feeds(monkeypatch):
    from graphopt.calibration import collector

    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["y"])],
                       [tensor("x", ["N", 4])], [tensor("y", [2, 8])], {"shape": np.array([2, 8])})
    monkeypatch.setattr(collector, "RUN_BUDGET", 16)  # one sample (4 values) cannot be reshaped to 2 x 8
    feeds = [{"x": np.arange(16, dtype=np.float32).reshape(4, 4) - 5}] * 2
    for bins in (32, 0):  # exposed tensors, then min/max reduced in the graph
        stats = collect_statistics(model, feeds, ["y", "r", "x"], bins=bins)
        assert (stats["y"].min, stats["y"].max, stats["y"].count) == (0.0, 10.0, 32)
        assert (stats["x"].min, stats["x"].max, stats["x"].count) == (-5.0, 10.0, 32)


@pytest.mark.parametrize("opset", [13, 18])
def test_channel_abs_max_reduced_in_graph_matches_numpy(opset):
    from graphopt.calibration.collector import channel_abs_max
    from graphopt.ir.check import annotate_shapes

    w = np.random.default_rng(1).standard_normal((6, 6)).astype(np.float32)  # > no placeholder
    big = np.random.default_rng(2).standard_normal((6, 400)).astype(np.float32)  # out-of-line weight
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Neg", ["h"], ["y"]),
                        helper.make_node("MatMul", ["h", "big"], ["z"])],
                       [tensor("x", ["N", 3, 6])], [tensor("y", ["N", 3, 6]), tensor("z", ["N", 3, 400])],
                       {"w": w, "big": big}, opset=opset)
    annotate_shapes(model)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((2, 3, 6)).astype(np.float32) * 10} for _ in range(3)]
    got = channel_abs_max(model, feeds, ["x", "h", "z"])
    for name, fn in (("x", lambda x: x), ("h", lambda x: x @ w), ("z", lambda x: (x @ w) @ big)):
        want = np.max([np.abs(fn(f["x"])).reshape(-1, f["x"].shape[-1] if name != "z" else 400).max(0)
                       for f in feeds], axis=0)
        np.testing.assert_allclose(got[name], want, rtol=1e-5)
    assert len(model.graph.node) == 3 and len(model.graph.output) == 2  # nothing left behind
