"""A fusion rule: the triple pattern / check / rewrite.

* `match(g, node)` looks at the anchor node and its neighbours only by op type and
  wiring; it returns a `Match` (the nodes involved plus named values) or None. A node that
  does not match is not worth a note.
* `check(g, m)` states the preconditions (constant operands, single consumer, broadcast
  shapes, dtype, opset, target) and returns the reason they fail, or None. Failed checks
  are near misses and land in PassResult.notes.
* `rewrite(g, m)` mutates the graph; it is only called after `check` passed and must not
  fail. It reuses the output name of the last replaced node so readers stay wired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx


@dataclass
class Match:
    """The nodes a rule matched (anchor first) and whatever the rewrite needs."""

    nodes: list[onnx.NodeProto]
    data: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def anchor(self) -> onnx.NodeProto:
        return self.nodes[0]

    def label(self) -> str:
        node = self.anchor
        return node.name or (node.output[0] if node.output else node.op_type)


@dataclass(frozen=True)
class Rule:
    """One fusion; `name` is its stats key (e.g. "conv_bn_folded")."""

    name: str
    ops: tuple[str, ...]
    match: Callable[..., Match | None]
    check: Callable[..., str | None]
    rewrite: Callable[..., None]
    doc: str = ""
    # Optional whole-graph form: batch(g, accept) visits every site in one scan, calls
    # accept(match) (exclusions, check, skip_sites, bookkeeping) and applies the accepted
    # rewrites itself. For rules whose sites are many and cheap (CSE), where a refresh of the
    # indexes after each rewrite would make the walk quadratic.
    batch: Callable[..., int] | None = None

    def site_id(self, m: Match) -> str:
        """Stable id of a rewrite site, listed in PassResult.sites and honoured in skip_sites."""
        return f"{self.name}:{m.label()}"
