"""The pass contract and the pass registry.

A pass is a small class: a stable kebab-case `name`, a one-line `summary`, an `Options`
dataclass (typed fields, defaults, a `doc` in each field's metadata), whether it is
lossless, and `run(model, ctx) -> PassResult`. Per-site logic returns a reason when a
site does not apply; the reasons land in the report, never as exceptions.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx

from graphopt.errors import InputError


@dataclass
class PassContext:
    """What a pass may consult besides the model: target, data, seed, sites to skip."""

    target: Any = None
    calibration_data: list[dict[str, np.ndarray]] | None = None
    verification_inputs: list[dict[str, np.ndarray]] | None = None
    seed: int = 0
    skip_sites: frozenset[str] = frozenset()
    progress: bool = False

    def data_for_statistics(self) -> list[dict[str, np.ndarray]]:
        """Calibration data when given, else the verification inputs."""
        return self.calibration_data or self.verification_inputs or []


@dataclass
class PassResult:
    """What a pass did: the new model, counts of rewrites, reasons for skipped sites.

    `tensor_map` maps tensors of the new graph to the tensor of the input graph that holds
    the same value (a fused Conv's output -> the folded BatchNorm's output), so `explain`
    can line up intermediate tensors. `sites` names each rewrite site; a pass honours
    `ctx.skip_sites` so `bisect` can revert sites one by one.
    """

    model: onnx.ModelProto
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tensor_map: dict[str, str] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)


class Pass:
    """Base class of every pass; subclasses set the class variables and `run`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    lossless: ClassVar[bool] = True

    @dataclass
    class Options:
        pass

    def __init__(self, **options: Any):
        self.options = parse_options(self.Options, options, self.name)

    def is_lossless(self) -> bool:
        """Whether outputs must match to float round-off (may depend on the options)."""
        return self.lossless

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def option_values(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)


def option(default: Any, doc: str, choices: tuple | None = None, low: float | None = None,
           high: float | None = None, regex: bool = False) -> Any:
    """A typed pass option with its one-line doc, allowed values or range [low, high],
    and whether its items are regular expressions (checked when parsed)."""
    metadata = {"doc": doc, "choices": choices, "low": low, "high": high, "regex": regex}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_options(options_cls: type, given: dict[str, Any], pass_name: str) -> Any:
    """Build `options_cls` from strings or typed values; unknown or bad values -> InputError."""
    hints = typing.get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    values = {}
    for key, raw in given.items():
        key = key.replace("-", "_")
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise InputError(f"pass {pass_name!r} has no option {key!r} (options: {known})")
        value = coerce(raw, hints[key], f"{pass_name}.{key}")
        _check_value(value, fields[key].metadata, f"{pass_name}.{key}")
        values[key] = value
    try:
        return options_cls(**values)
    except (ValueError, TypeError) as err:  # cross-option checks in __post_init__
        raise InputError(f"pass {pass_name!r}: {err}") from err


def _check_value(value: Any, meta: dict, label: str) -> None:
    choices = meta.get("choices")
    if choices and value not in choices:
        raise InputError(f"{label}={value!r}: expected one of {', '.join(map(str, choices))}")
    low, high = meta.get("low"), meta.get("high")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            raise InputError(f"{label}={value!r}: expected a value in {bounds}")
    if meta.get("regex"):
        for pattern in value or []:
            try:
                re.compile(pattern)
            except re.error as err:
                raise InputError(f"{label}: bad regular expression {pattern!r} ({err})") from err


def coerce(raw: Any, hint: Any, label: str) -> Any:
    """Convert `raw` (a string from the inline syntax, or a TOML value) to `hint`."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        return coerce(raw, args[0], label)
    if origin is list:
        items = raw if isinstance(raw, list) else split_list(str(raw))
        return [coerce(item, args[0] if args else str, label) for item in items]
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "1", "yes", "on"):
                return True
            if str(raw).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if hint is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as err:
        name = getattr(hint, "__name__", str(hint))
        raise InputError(f"{label}: expected {name}, got {raw!r}") from err


def split_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [item.strip().strip("'\"") for item in re.split(r"[;,|]", text) if item.strip()]


def describe_options(options_cls: type) -> list[dict[str, Any]]:
    """Name, type, default, doc and choices of each option, for `graphopt passes`."""
    hints = typing.get_type_hints(options_cls)
    rows = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default,
                     "doc": f.metadata.get("doc", ""), "choices": f.metadata.get("choices")})
    return rows


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
