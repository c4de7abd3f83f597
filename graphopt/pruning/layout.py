"""Channel layouts: which elements of a tensor axis belong to which prunable channel.

A tracked tensor has one tracked axis described by a list of segments laid end to end.
A segment `Seg(group, channels, scale)` covers `channels * scale` elements of the axis;
with the group's pruning unit `B` channels (1 for filters, head_dim for attention heads),
element `e` of the segment belongs to unit

    unit(e) = e // (B * scale)

`scale` is a Fraction: Flatten of [N, C, H, W] multiplies it by H*W (each channel owns
H*W consecutive features), a depthwise multiplier m by m, a Reshape that splits D into
(heads, head_dim) divides it by head_dim (one element per head). A segment with
`group=None` is opaque: elements that no prunable producer owns (a Concat operand from a
graph input); they are always kept. Pruning keeps an element iff its unit is kept, so
every consumer of the axis (weights, biases, Reshape sizes, Split sizes) is sliced with the
same element indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class Seg:
    group: int | None
    channels: int
    scale: Fraction = Fraction(1)

    @property
    def size(self) -> int:
        return int(self.channels * self.scale)

    def scaled(self, factor: Fraction) -> "Seg":
        return Seg(self.group, self.channels, self.scale * factor)


@dataclass(frozen=True)
class Layout:
    """The tracked axis of a tensor (non-negative) and its segments."""

    axis: int
    segs: tuple[Seg, ...]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segs)

    def moved(self, axis: int) -> "Layout":
        return Layout(axis, self.segs)

    def scaled(self, factor) -> "Layout":
        return Layout(self.axis, tuple(s.scaled(Fraction(factor)) for s in self.segs))


def seg_units(seg: Seg, unit_channels: int) -> np.ndarray:
    """Unit index of every element of `seg` (see module docstring)."""
    per_unit = unit_channels * seg.scale
    if per_unit.denominator != 1:
        raise ValueError(f"unit of {unit_channels} channels splits an element (scale {seg.scale})")
    return np.arange(seg.size) // int(per_unit)


def kept_elements(segs, root_of, unit_of, kept_units) -> np.ndarray:
    """Indices (along the axis) of the elements that survive pruning.

    `root_of(group)` -> group root; `unit_of[root]` channels per unit; `kept_units[root]`
    sorted kept unit indices (absent: group not pruned).
    """
    parts, offset = [], 0
    for seg in segs:
        root = None if seg.group is None else root_of(seg.group)
        if root is None or root not in kept_units:
            parts.append(offset + np.arange(seg.size))
        else:
            units = seg_units(seg, unit_of[root])
            parts.append(offset + np.nonzero(np.isin(units, kept_units[root]))[0])
        offset += seg.size
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
