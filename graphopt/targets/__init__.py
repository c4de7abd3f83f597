"""Per-target cost models: what a graph costs on the device it ships to.

    load_target("cpu" | "gpu" | "npu" | "mcu" | "my_device.toml" | Target) -> Target
    estimate_cost(model, target, per_node=False, input_shapes=None,
                  optimize_order=False, threads=None) -> dict
    matmul_latency_ms(target, m, k, n, dtype="fp32", sparse=False) -> float
    builtin_targets() -> list[str]

Targets are data (data/*.toml, schema in schema.py); per-node work in ops.py and qdq.py,
pricing in roofline.py, the activation arena in memory.py, the fit verdict in fit.py,
totals in estimate.py.
"""

from graphopt.targets.estimate import estimate_cost
from graphopt.targets.roofline import matmul_latency_ms
from graphopt.targets.schema import MemoryLevel, Target, builtin_targets, load_target

__all__ = ["MemoryLevel", "Target", "builtin_targets", "estimate_cost", "load_target",
           "matmul_latency_ms"]
