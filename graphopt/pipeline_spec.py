"""Pipeline specifications: the inline MLIR-style syntax and TOML pipeline files.

Inline: `fuse,prune-channels{ratio=0.3},quantize{calibration=entropy,per_channel=true}`;
option values may be lists in brackets (`exclude=[conv1,conv2]`).
File (TOML): `target = "mcu"`, `[[passes]] name = "fuse"` with options as keys, and an
optional `[verify]` table of thresholds (`min_cosine`, `min_snr_db`, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from graphopt.errors import InputError

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
CONTRIB_FAMILIES = ("contrib", "attention")  # fuse families that emit com.microsoft ops


@dataclass
class PassSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        inner = ",".join(f"{k}={_format_value(v)}" for k, v in self.options.items())
        return f"{self.name}{{{inner}}}"


@dataclass
class PipelineConfig:
    passes: list[PassSpec]
    target: str | None = None
    verify: dict[str, Any] = field(default_factory=dict)
    calibration_data: str | None = None
    notes: list[str] = field(default_factory=list)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def parse_inline(text: str) -> list[PassSpec]:
    """Parse the inline syntax; any malformed piece raises InputError naming it."""
    specs = []
    for piece in _split_top_level(text.strip(), ","):
        piece = piece.strip()
        if not piece:
            raise InputError(f"empty pass in pipeline {text!r}")
        match = re.fullmatch(r"([^{}]+?)\s*(?:\{(.*)\})?", piece, flags=re.S)
        if not match:
            raise InputError(f"cannot parse pass {piece!r} (expected name or name{{key=value,...}})")
        name, body = match.group(1).strip(), match.group(2)
        if not _NAME.match(name):
            raise InputError(f"bad pass name {name!r} in pipeline {text!r}")
        specs.append(PassSpec(name, _parse_options(body or "", piece)))
    return specs


def _parse_options(body: str, piece: str) -> dict[str, str]:
    options = {}
    for item in _split_top_level(body, ","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise InputError(f"option {item!r} in {piece!r} needs the form key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        if not key:
            raise InputError(f"option without a name in {piece!r}")
        if key in options:
            raise InputError(f"option {key!r} given twice in {piece!r}")
        options[key] = value
    return options


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on `sep` outside braces and brackets; unbalanced text raises InputError."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise InputError(f"unbalanced brackets in {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise InputError(f"unbalanced brackets in {text!r}")
    parts.append(text[start:])
    return parts if text else []


def _is_false(value: Any) -> bool:
    return value is False or str(value).strip().lower() in ("false", "0", "no", "off")


def with_quantize_prerequisites(specs: list[PassSpec], contrib: bool = True) -> tuple[list[PassSpec], str | None]:
    """Quantize after `cleanup,fuse` by default, so that BatchNorm and biases are folded
    before ranges are calibrated: a `quantize` with no `fuse` before it gets `fuse` (and
    `cleanup`, when that is missing too) inserted right in front of it, unless its option
    `prepare` is false. A `fuse` before `quantize` leaves out the contrib-op families
    (FusedConv, com.microsoft Attention make float-only nodes quantize cannot put into integer
    kernels) unless its `rules` are given; `contrib` says whether the target has those ops at
    all (without them those families do nothing and fuse is left as written). Returns
    (specs, note saying what changed, or None)."""
    from graphopt.fusion import FAMILIES

    rules = [f for f in FAMILIES if f not in CONTRIB_FAMILIES]
    for k, spec in enumerate(specs):
        if spec.name != "quantize":
            continue
        if _is_false(spec.options.get("prepare", True)):
            return specs, None
        fuses = [s for s in specs[:k] if s.name == "fuse"]
        if fuses:
            narrowed = [s for s in fuses if "rules" not in s.options] if contrib else []
            for s in narrowed:
                s.options = {**s.options, "rules": rules}
            note = ("pipeline: fuse before quantize runs without the contrib families "
                    f"({', '.join(CONTRIB_FAMILIES)}) so that quantize can use integer kernels; "
                    "fuse{rules=...} sets them explicitly")
            return specs, note if narrowed else None
        added = ([PassSpec("cleanup")] if "cleanup" not in {s.name for s in specs[:k]} else []) + \
            [PassSpec("fuse", {"rules": rules} if contrib else {})]
        names = ",".join(str(a) for a in added)
        return (specs[:k] + added + specs[k:],
                f"pipeline: inserted {names} before quantize (fold BatchNorm and biases first; "
                "quantize{prepare=false} turns this off)")
    return specs, None


def load_pipeline_file(path) -> PipelineConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such pipeline file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read pipeline file ({err})") from err
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: invalid TOML ({err})") from err
    return pipeline_from_dict(data, str(path))


def pipeline_from_dict(data: dict, label: str = "pipeline") -> PipelineConfig:
    unknown = set(data) - {"target", "passes", "verify", "calibration_data"}
    if unknown:
        raise InputError(f"{label}: unknown key(s) {', '.join(sorted(unknown))}")
    passes = data.get("passes", [])
    if not isinstance(passes, list) or not all(isinstance(p, dict) for p in passes):
        raise InputError(f"{label}: 'passes' must be an array of tables ([[passes]])")
    specs = []
    for entry in passes:
        entry = dict(entry)
        name = entry.pop("name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(f"{label}: every [[passes]] entry needs a valid name")
        specs.append(PassSpec(name, entry))
    verify = data.get("verify", {})
    if not isinstance(verify, dict):
        raise InputError(f"{label}: [verify] must be a table")
    target = data.get("target")
    if target is not None and not isinstance(target, str):
        raise InputError(f"{label}: target must be a string")
    return PipelineConfig(specs, target, verify, data.get("calibration_data"))
