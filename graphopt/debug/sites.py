"""Finding the rewrite sites of one pass that make it fail (delta debugging).

A pass that honours `ctx.skip_sites` can be rerun applying any subset A of its sites S
(skip = S - A). Given fails(A) with fails(S) true and fails({}) false, `ddmin` (Zeller &
Hildebrandt 2002) returns a 1-minimal failing subset: removing any one of its sites makes
the failure go away. A single bad site is found in about 2 log2|S| runs; several that only
fail together are found as a set. Results are cached per subset, and a run budget bounds
the work on passes with many sites.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class Budget(Exception):
    """The allotted number of pass reruns is spent."""


class CachedProbe:
    """fails(applied sites) with a cache and a run budget; keeps each run's outcome."""

    def __init__(self, run: Callable[[frozenset], dict], budget: int):
        self.run, self.budget, self.cache, self.runs = run, budget, {}, 0

    def outcome(self, applied) -> dict:
        key = frozenset(applied)
        if key not in self.cache:
            if self.runs >= self.budget:
                raise Budget()
            self.runs += 1
            self.cache[key] = self.run(key)
        return self.cache[key]

    def fails(self, applied) -> bool:
        return bool(self.outcome(applied)["failed"])


def ddmin(items: list[str], fails: Callable[[list[str]], bool]) -> list[str]:
    """A 1-minimal sublist of `items` (which fails) that still fails."""
    n = 2
    while len(items) >= 2:
        chunks = _split(items, n)
        reduced = next((c for c in chunks if fails(c)), None)
        if reduced is not None:
            items, n = reduced, 2
            continue
        if n > 2:  # with two chunks the complements are the chunks themselves
            complement = next((rest for c in chunks
                               if fails(rest := [x for x in items if x not in set(c)])), None)
            if complement is not None:
                items, n = complement, max(n - 1, 2)
                continue
        if n >= len(items):
            break
        n = min(len(items), 2 * n)
    return items


def _split(items: list[str], n: int) -> list[list[str]]:
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            chunks.append(items[start:end])
        start = end
    return chunks


def localize(sites: list[str], probe: CachedProbe, impact_limit: int = 32) -> dict:
    """The sites responsible for the failure.

    `causes`: minimal failing subsets found one after another (each run of ddmin on the
    sites still applied, until what is left passes). `sites`: a 1-minimal set to revert,
    i.e. reverting exactly these makes the pass acceptable and re-applying any one of them
    fails again. `site_impact` (up to `impact_limit` sites): each site's error applied alone.
    """
    if not sites:
        return {"localized": False, "note": "the pass reports no rewrite sites (PassResult.sites)"}
    try:
        if probe.fails(frozenset()):
            return {"localized": False, "note": "still fails with every site skipped: the pass ignores "
                    "ctx.skip_sites or the failure is not tied to its sites"}
        causes, applied = _causes(list(sites), probe)
        revert = _minimal_revert(applied, [s for s in sites if s not in applied], probe)
    except Budget:
        return {"localized": False, "note": f"gave up after {probe.runs} reruns of the pass (budget)"}
    log.info("sites responsible: %s (%d reruns)", revert, probe.runs)
    return {"localized": True, "sites": revert, "causes": causes,
            "site_impact": _impact(sites, probe) if len(sites) <= impact_limit else []}


def _impact(sites: list[str], probe: CachedProbe) -> list[dict]:
    """Each site's error applied alone, worst first; as many as the run budget allows."""
    rows = []
    for site in sites:
        try:
            rows.append({"site": site, **_summary(probe.outcome(frozenset({site})))})
        except Budget:
            break
    return sorted(rows, key=lambda row: (not row["failed"], row.get("cosine", 1.0)))


def _causes(applied: list[str], probe: CachedProbe) -> tuple[list[list[str]], list[str]]:
    """Peel off minimal failing subsets until the remaining applied sites pass."""
    causes = []
    while probe.fails(frozenset(applied)):
        cause = ddmin(applied, probe.fails)
        causes.append(cause)
        applied = [s for s in applied if s not in set(cause)]
    return causes, applied


def _minimal_revert(applied: list[str], reverted: list[str], probe: CachedProbe) -> list[str]:
    """Re-apply every reverted site that the pass can keep without failing."""
    needed = list(reverted)
    for site in reverted:
        keep = [s for s in needed if s != site]
        if not probe.fails(frozenset(applied) | {site}):
            applied = [*applied, site]
            needed = keep
    return needed


def _summary(outcome: dict) -> dict:
    keys = ("failed", "cosine", "snr_db", "max_abs_error", "top1_agreement", "error")
    return {k: outcome[k] for k in keys if k in outcome}
