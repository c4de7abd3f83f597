"""Calibration: feed data through onnxruntime once and turn tensor statistics into ranges.

readers    -> feed dicts from .npz files, iterables or (loudly) synthesized data
histogram  -> streaming per-tensor statistics (min, max, count, one signed histogram)
collector  -> one onnxruntime pass over the data: min/max reduced in the graph, or every
              tensor that needs a histogram exposed, in runs of a few samples
ranges     -> clipping ranges from statistics: minmax, percentile, entropy, mse
"""

from graphopt.calibration.collector import collect_statistics
from graphopt.calibration.histogram import TensorStats
from graphopt.calibration.ranges import METHODS, compute_range
from graphopt.calibration.readers import calibration_feeds, count_samples

__all__ = ["METHODS", "TensorStats", "calibration_feeds", "collect_statistics", "compute_range",
           "count_samples"]
