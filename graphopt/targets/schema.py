"""Target descriptions: the TOML schema, its validation, and the `Target` record.

A target is data, not code: built-ins live in `graphopt/targets/data/<name>.toml` and a
user file with the same keys describes any other device. Units everywhere:

    peak_gops.{dense,sparse_2to4}.<dtype>   GOPS, 1 MAC = 2 ops
    memory[].bandwidth_gbps                GB/s (1e9 bytes/s)
    memory[].capacity_bytes                bytes
    energy_pj_per_mac.<dtype>, memory[].energy_pj_per_byte
    op_overhead_us, run_overhead_us        microseconds

Passes ask the target (`supports_op`, `supports_dtype`, `peak_macs_per_s`); they never
test the target's name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from graphopt.errors import InputError

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
DTYPES = ("fp32", "fp16", "bf16", "int8", "int4")
EFFICIENCY_CLASSES = ("conv", "depthwise_conv", "conv_transpose", "matmul", "small_matmul",
                      "elementwise", "reduce", "other")
REQUIRED = ("name", "description", "peak_gops", "memory", "energy_pj_per_mac", "support")
# [quantization]: what the target's integer kernels want; the `quantize` pass takes these
# as defaults for the options of the same name that the user did not set explicitly.
QUANTIZATION_KEYS = {
    "activation_type": ("uint8", "int8"),       # activation dtype its kernels run fastest
    "symmetric_activations": bool,              # zero point 0 (int8) / 128 (uint8)
    "weight_type": ("int8", "int4"),
    "per_channel": bool,
    "activation_matmul": bool,                  # quantize activation x activation MatMuls
    "smooth_alpha": float,                      # SmoothQuant migration strength, 0 = off
    "float_range_limit": float,                 # tensors reaching |x| >= this stay float
}


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the memory hierarchy; `holds` names what lives there when uncached."""

    name: str
    capacity_bytes: int
    bandwidth_gbps: float
    energy_pj_per_byte: float
    holds: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fallback:
    """Where ops the target cannot run go (e.g. an NPU's host CPU), and what it costs."""

    device: str
    peak_gops: float
    efficiency: float
    overhead_us: float


@dataclass(frozen=True)
class Target:
    """A device the cost model can price a graph on (see the module docstring for units)."""

    name: str
    description: str
    peak_gops: dict[str, float]
    sparse_peak_gops: dict[str, float]
    memory: tuple[MemoryLevel, ...]
    energy_pj_per_mac: dict[str, float]
    dtypes: frozenset[str]
    ops: frozenset[str]
    unsupported_action: str = "cannot run"
    contrib_domains: tuple[str, ...] = ()
    default_pipeline: str = "cleanup,fuse"
    efficiency: dict[str, float] = field(default_factory=dict)
    dtype_efficiency: dict[str, float] = field(default_factory=dict)
    op_overhead_us: float = 0.0
    run_overhead_us: float = 0.0
    cores: int = 1
    parallel_efficiency: float = 1.0
    fuses_activations: bool = False
    fallback: Fallback | None = None
    quantization: dict = field(default_factory=dict)
    source: str = ""

    def supports_dtype(self, dtype: str) -> bool:
        return dtype in self.dtypes

    def supports_op(self, op_type: str, domain: str = "") -> bool:
        if domain not in ("", "ai.onnx") and domain not in self.contrib_domains:
            return False
        return "*" in self.ops or op_type in self.ops

    def peak_macs_per_s(self, dtype: str, sparse: bool = False, threads: int = 1) -> float:
        """Achievable MAC/s for `dtype` (peak x dtype_efficiency; 0 when the target has no
        unit for it), scaled to `threads`."""
        table = self.sparse_peak_gops if sparse else self.peak_gops
        gops = table.get(dtype, 0.0)
        used = max(1, min(threads, self.cores))
        achieved = gops * self.dtype_efficiency.get(dtype, 1.0)
        return achieved * 1e9 / 2 * (1 + (used - 1) * self.parallel_efficiency)

    def level(self, holds: str) -> MemoryLevel:
        """The level that stores `holds` ("weights" or "activations") when uncached."""
        for lvl in self.memory:
            if holds in lvl.holds:
                return lvl
        return self.memory[-1]


def builtin_targets() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.toml"))


def load_target(spec) -> Target:
    """A built-in name, a path to a TOML file, or a Target (returned as is)."""
    if isinstance(spec, Target):
        return spec
    text = str(spec)
    if text in builtin_targets():
        return _from_file(DATA_DIR / f"{text}.toml")
    path = Path(text)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise InputError(f"target file {path}: no such file")
        return _from_file(path)
    raise InputError(f"unknown target {text!r}; known targets: {', '.join(builtin_targets())} "
                     "(or a path to a .toml target file)")


def _from_file(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"target file {path}: cannot read ({err})") from err
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"target file {path}: invalid TOML ({err})") from err
    try:
        return from_dict(data, source=str(path))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"target file {path}: {err}") from err


def from_dict(data: dict, source: str = "") -> Target:
    """Validate a parsed TOML table and build a Target; ValueError names the bad key."""
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    peaks = data["peak_gops"]
    dense = _dtype_table(peaks.get("dense", {}), "peak_gops.dense")
    sparse = _dtype_table(peaks.get("sparse_2to4", dense), "peak_gops.sparse_2to4")
    if not dense:
        raise ValueError("peak_gops.dense must give at least one dtype")
    memory = tuple(_memory_level(i, m) for i, m in enumerate(data["memory"]))
    if not memory:
        raise ValueError("memory must list at least one level")
    support = data["support"]
    action = support.get("unsupported_action", "cannot run")
    if action not in ("cannot run", "fallback"):
        raise ValueError(f"support.unsupported_action must be 'cannot run' or 'fallback', not {action!r}")
    fallback = _fallback(data.get("fallback"))
    if action == "fallback" and fallback is None:
        raise ValueError("support.unsupported_action = 'fallback' needs a [fallback] table")
    efficiency = {k: float(v) for k, v in data.get("efficiency", {}).items()}
    bad = [k for k, v in efficiency.items() if k not in EFFICIENCY_CLASSES or not 0 < v <= 1]
    if bad:
        raise ValueError(f"efficiency: bad class or value outside (0, 1]: {', '.join(bad)}")
    dtype_eff = _dtype_table(data.get("dtype_efficiency", {}), "dtype_efficiency")
    if any(not 0 < v <= 1 for v in dtype_eff.values()):
        raise ValueError("dtype_efficiency values must lie in (0, 1]")
    return Target(
        name=str(data["name"]), description=str(data["description"]), peak_gops=dense,
        sparse_peak_gops=sparse, memory=memory,
        energy_pj_per_mac=_dtype_table(data["energy_pj_per_mac"], "energy_pj_per_mac"),
        dtypes=frozenset(_dtype_list(support.get("dtypes", list(dense)))),
        ops=frozenset(str(o) for o in support.get("ops", ["*"])),
        unsupported_action=action,
        contrib_domains=tuple(str(d) for d in data.get("contrib_domains", [])),
        default_pipeline=str(data.get("default_pipeline", "cleanup,fuse")),
        efficiency=efficiency, dtype_efficiency=dtype_eff,
        op_overhead_us=_nonneg(data, "op_overhead_us"),
        run_overhead_us=_nonneg(data, "run_overhead_us"),
        cores=int(data.get("cores", 1)),
        parallel_efficiency=float(data.get("parallel_efficiency", 1.0)),
        fuses_activations=bool(data.get("fuses_activations", False)),
        fallback=fallback, quantization=_quantization(data.get("quantization", {})), source=source,
    )


def _quantization(table) -> dict:
    """Validate the [quantization] table (keys and value types of QUANTIZATION_KEYS)."""
    if not isinstance(table, dict):
        raise ValueError("quantization must be a table")
    out = {}
    for key, value in table.items():
        kind = QUANTIZATION_KEYS.get(key)
        if kind is None:
            raise ValueError(f"quantization: unknown key {key!r} (known: {', '.join(QUANTIZATION_KEYS)})")
        if isinstance(kind, tuple):
            if value not in kind:
                raise ValueError(f"quantization.{key} must be one of {', '.join(kind)}, not {value!r}")
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"quantization.{key} must be true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"quantization.{key} must be a non-negative number")
        else:
            value = float(value)
            if key == "smooth_alpha" and value > 1:
                raise ValueError("quantization.smooth_alpha must lie in [0, 1]")
        out[key] = value
    return out


def _dtype_table(table, where: str) -> dict[str, float]:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table of dtype = number")
    out = {}
    for key, value in table.items():
        if key not in DTYPES:
            raise ValueError(f"{where}: unknown dtype {key!r} (known: {', '.join(DTYPES)})")
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{where}.{key} must be a non-negative number")
        out[key] = float(value)
    return out


def _dtype_list(values) -> list[str]:
    bad = [v for v in values if v not in DTYPES]
    if bad:
        raise ValueError(f"support.dtypes: unknown dtype(s) {', '.join(map(str, bad))}")
    return list(values)


def _memory_level(index: int, table: dict) -> MemoryLevel:
    for key in ("name", "capacity_bytes", "bandwidth_gbps"):
        if key not in table:
            raise ValueError(f"memory[{index}] is missing {key!r}")
    if table["bandwidth_gbps"] <= 0 or table["capacity_bytes"] <= 0:
        raise ValueError(f"memory[{index}]: capacity and bandwidth must be positive")
    return MemoryLevel(str(table["name"]), int(table["capacity_bytes"]),
                       float(table["bandwidth_gbps"]),
                       float(table.get("energy_pj_per_byte", 0.0)),
                       tuple(str(h) for h in table.get("holds", ())))


def _fallback(table) -> Fallback | None:
    if table is None:
        return None
    return Fallback(str(table.get("device", "host")), float(table["peak_gops"]),
                    float(table.get("efficiency", 1.0)), float(table.get("overhead_us", 0.0)))


def _nonneg(data: dict, key: str) -> float:
    value = float(data.get(key, 0.0))
    if value < 0:
        raise ValueError(f"{key} must be >= 0")
    return value
