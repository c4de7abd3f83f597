"""Fusion rule families used by the `fuse` pass; one module per family, each exporting RULES.

Families run in the order listed: folding first (it removes nodes that would hide later
patterns), then layout and no-op removal, CSE, pattern fusion, and target-specific
contrib fusion last.
"""

from __future__ import annotations

import importlib

from graphopt.fusion.rule import Match, Rule

FAMILIES = ("batchnorm", "affine", "layout", "noop", "cse", "normalization", "activations", "attention",
            "contrib")


def family_rules(name: str) -> list[Rule]:
    return list(importlib.import_module(f"graphopt.fusion.{name}").RULES)


__all__ = ["FAMILIES", "Match", "Rule", "family_rules"]
