"""Structured channel pruning: coupling analysis, importance, plan and rewrite.

    layout.py      which elements of a tensor axis belong to which prunable unit
    coupling.py    union-find over channel groups, walk of the graph, actions
    rules.py       rule registry, element-wise / normalization / pooling rules
    rules_shape.py Transpose, Squeeze, Reduce, Flatten, Reshape, Concat, Split, Slice
    rules_linear.py Conv (grouped, depthwise), ConvTranspose, Gemm, MatMul
    importance.py  l1, l2 group norms and mean |activation|
    plan.py        candidate groups, unit counts (ratio, scope, round_to, min_channels)
    rewrite.py     slicing of constants, attributes and shape entries; zeroing for tests
The pass itself is graphopt/passes/prune_channels.py.
"""
