"""Acceptance thresholds for lossy results, checked against the worst output."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from graphopt.errors import InputError


@dataclass
class Thresholds:
    min_cosine: float | None = 0.99
    max_abs_error: float | None = None
    min_snr_db: float | None = None
    min_top1_agreement: float | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "Thresholds":
        known = set(asdict(cls()))
        unknown = set(values) - known
        if unknown:
            raise InputError(f"unknown verify threshold(s) {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(known))})")
        try:
            return cls(**{k: (None if v is None else float(v)) for k, v in values.items()})
        except (TypeError, ValueError) as err:
            raise InputError(f"bad verify threshold: {err}") from err

    def failures(self, outputs: dict) -> list[str]:
        """Human-readable reasons each output misses a threshold (empty when all pass)."""
        reasons = []
        for name, m in outputs.items():
            if m.get("missing") or "shape_mismatch" in m or m.get("exact_match") is False:
                reasons.append(f"{name}: output missing, reshaped or changed")
                continue
            if "cosine" not in m:
                continue
            if m.get("nan_or_inf_candidate", 0) > m.get("nan_or_inf_reference", 0):
                reasons.append(f"{name}: candidate has NaN/Inf values")
            checks = ((self.min_cosine, "cosine", lambda v, t: v >= t, ">="),
                      (self.min_snr_db, "snr_db", lambda v, t: v >= t, ">="),
                      (self.min_top1_agreement, "top1_agreement", lambda v, t: v >= t, ">="),
                      (self.max_abs_error, "max_abs_error", lambda v, t: v <= t, "<="))
            for limit, key, ok, sign in checks:
                if limit is not None and key in m and not ok(m[key], limit):
                    reasons.append(f"{name}: {key} {m[key]:.6g} not {sign} {limit:g}")
        return reasons

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}
