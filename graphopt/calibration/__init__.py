"""Calibration: feed data through onnxruntime once and turn tensor statistics into ranges.

readers    -> feed dicts from .npz files, iterables or (loudly) synthesized data
histogram  -> streaming per-tensor statistics (min, max, two magnitude histograms)
collector  -> one onnxruntime run over the data exposing every tensor that needs a range
ranges     -> clipping ranges from statistics: minmax, percentile, entropy, mse
"""

from graphopt.calibration.collector import collect_statistics
from graphopt.calibration.histogram import TensorStats
from graphopt.calibration.ranges import METHODS, compute_range
from graphopt.calibration.readers import calibration_feeds, count_samples

__all__ = ["METHODS", "TensorStats", "calibration_feeds", "collect_statistics", "compute_range",
           "count_samples"]
