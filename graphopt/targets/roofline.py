"""Roofline pricing of one node's work on a target: latency, energy, bound.

    t_compute = MACs / (peak_MAC/s[dtype, sparse] * efficiency[kind] * threads_speedup)
                (ops without MACs count FLOPs / 2 MAC-equivalents)
    t_memory  = weight_bytes / BW[weight level] + activation_bytes / BW[activation level]
    latency   = max(t_compute, t_memory) + op_overhead      bound = the larger term
    energy    = MACs * E_mac[dtype] + (FLOPs - 2 MACs) * 0.2 * E_mac[dtype]
                + bytes * E_byte[level]

The 0.2 factor prices a lone add/compare against a multiply-accumulate (Horowitz ISSCC
2014: fp32 add 0.9 pJ vs fp32 MAC 4.6 pJ; int8 add 0.03 pJ vs int8 MAC 0.3 pJ).

Which level serves the bytes: activations come from the smallest cache level (a level
that holds nothing by itself) that fits the node's working set, else from their home
level; weights come from a cache level only when all weights plus the activation peak
stay resident there across inferences, else from their home level. A home level too
small for what it must hold spills to the next larger level.

Ops the target cannot run (op or dtype unsupported) are priced on the target's
fallback device, with the tensors copied out and back over the largest memory level.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.targets.ops import NodeWork
from graphopt.targets.schema import MemoryLevel, Target

NON_MAC_ENERGY = 0.2


@dataclass
class Placement:
    """Where bytes live for this model on this target (see module docstring)."""

    weights: MemoryLevel
    activations_home: MemoryLevel
    caches: tuple[MemoryLevel, ...]

    def activation_level(self, working_set: float) -> MemoryLevel:
        for lvl in self.caches:
            if working_set <= lvl.capacity_bytes:
                return lvl
        return self.activations_home


def placement(target: Target, weight_bytes: float, activation_peak: float) -> Placement:
    caches = tuple(lvl for lvl in target.memory if not lvl.holds)
    act_home = home_level(target, "activations", activation_peak)
    weights = home_level(target, "weights", weight_bytes)
    index = {lvl.name: i for i, lvl in enumerate(target.memory)}
    for lvl in caches:  # resident across inferences when everything stays in the cache
        if index[lvl.name] < index[weights.name] and weight_bytes + activation_peak <= lvl.capacity_bytes:
            weights = lvl
            break
    return Placement(weights, act_home, caches)


def home_level(target: Target, kind: str, demand: float) -> MemoryLevel:
    """The level holding `kind`, or the next larger one it spills to."""
    home = target.level(kind)
    if demand <= home.capacity_bytes:
        return home
    start = target.memory.index(home)
    for lvl in target.memory[start + 1:]:
        if not lvl.holds and lvl.capacity_bytes >= demand:
            return lvl
    return home


@dataclass
class Priced:
    latency_s: float
    energy_j: float
    bound: str
    compute_s: float
    memory_s: float


def price(work: NodeWork, target: Target, place: Placement, threads: int,
          unsupported: bool = False) -> Priced:
    if work.fused:
        energy = _compute_energy(work, target) if work.flops else 0.0
        return Priced(0.0, energy, "compute", 0.0, 0.0)
    act_bytes = work.read_bytes + work.write_bytes
    act_level = place.activation_level(act_bytes + work.weight_bytes)
    memory_s = (work.weight_bytes / (place.weights.bandwidth_gbps * 1e9)
                + act_bytes / (act_level.bandwidth_gbps * 1e9))
    mac_equiv = work.macs if work.macs else work.flops / 2
    overhead_us = target.op_overhead_us
    if unsupported and target.fallback is not None:
        fb = target.fallback
        compute_s = mac_equiv / (fb.peak_gops * 1e9 / 2 * fb.efficiency)
        memory_s += 2 * (act_bytes + work.weight_bytes) / (target.memory[-1].bandwidth_gbps * 1e9)
        overhead_us += fb.overhead_us
    else:
        peak = target.peak_macs_per_s(compute_dtype(work.dtype, target), work.sparse_weight, threads)
        eff = target.efficiency.get(work.kind, target.efficiency.get("other", 1.0))
        compute_s = mac_equiv / (peak * eff) if mac_equiv and peak else 0.0
    energy = (_compute_energy(work, target) + work.weight_bytes * place.weights.energy_pj_per_byte * 1e-12
              + act_bytes * act_level.energy_pj_per_byte * 1e-12)
    bound = "compute" if compute_s >= memory_s else "memory"
    return Priced(max(compute_s, memory_s) + overhead_us * 1e-6, energy, bound, compute_s, memory_s)


def compute_dtype(dtype: str, target: Target) -> str:
    """Peak-table key for `dtype`: integer index math and fp64 run on the float units."""
    if dtype in target.peak_gops:
        return dtype
    if "fp32" in target.peak_gops:
        return "fp32"
    return max(target.peak_gops, key=target.peak_gops.get)


def _compute_energy(work: NodeWork, target: Target) -> float:
    table = target.energy_pj_per_mac
    e_mac = table.get(work.dtype, table.get("fp32", max(table.values(), default=0.0)))
    extra = max(work.flops - 2 * work.macs, 0)
    return (work.macs * e_mac + extra * NON_MAC_ENERGY * e_mac) * 1e-12


def matmul_latency_ms(target, m: int, k: int, n: int, dtype: str = "fp32",
                      sparse: bool = False, threads: int | None = None) -> float:
    """Latency of one [m,k] x [k,n] product with a constant [k,n] weight on `target`."""
    from graphopt.targets.schema import load_target

    target = load_target(target)
    size = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}.get(dtype, 4)
    macs = m * k * n
    work = NodeWork("matmul", "MatMul", "", macs=macs, flops=2 * macs, read_bytes=m * k * size,
                    weight_bytes=k * n * size, write_bytes=m * n * 4, dtype=dtype,
                    kind="matmul" if macs >= 100_000 else "small_matmul", sparse_weight=sparse)
    place = placement(target, work.weight_bytes, work.read_bytes + work.write_bytes)
    unsupported = not target.supports_dtype(dtype)
    priced = price(work, target, place, threads or target.cores, unsupported)
    return priced.latency_s * 1e3
