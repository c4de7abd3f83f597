"""Debugging optimized models: which pass broke it (bisect), where (explain), what changed (diff)."""

from graphopt.debug.bisect import bisect
from graphopt.debug.correspond import chain_tensor_maps, load_tensor_map
from graphopt.debug.diff import diff
from graphopt.debug.explain import explain
from graphopt.debug.layers import layer_stats

__all__ = ["bisect", "chain_tensor_maps", "diff", "explain", "layer_stats", "load_tensor_map"]
