"""Activation memory: a liveness-based arena plan over an execution order.

Every non-constant tensor gets a buffer. A buffer is live from the step that produces
it (graph inputs: from the start) to the last step that reads it (graph outputs: to the
end). While step s runs, its inputs and its outputs are live together, so

    peak = max over steps s of  sum(size(b) for b live at s)

is the least memory any allocator needs for that order. An elementwise or view step may
write in place into an input buffer of the same size whose last reader it is (the input
is not a graph input, which the caller owns): output and input then share one buffer.

`arena_bytes` places buffers at byte offsets, greedily by decreasing size at the lowest
offset that does not overlap a buffer alive at the same time (TFLite Micro's planner);
it is >= peak and is what a static arena must reserve. Alignment padding is ignored.

`best_order` searches other topological orders (beam search, width 16, scoring the
running peak) and keeps the given order unless one lowers the peak: on branching graphs
(residual blocks, Inception) running the branch that frees more memory first helps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

BEAM_WIDTH = 16
MAX_SEARCH_STEPS = 3000


@dataclass(frozen=True)
class Step:
    name: str
    inputs: tuple[str, ...]      # non-constant tensors read
    outputs: tuple[str, ...]
    inplace: bool = False        # may reuse a dying same-size input buffer


@dataclass
class ArenaPlan:
    peak_bytes: int
    arena_bytes: int
    peak_step: str
    order: list[str]
    inplace: dict[str, str]      # output tensor -> input tensor whose buffer it reuses


def plan_arena(steps: list[Step], sizes: dict[str, int], graph_inputs: set[str],
               graph_outputs: set[str]) -> ArenaPlan:
    buffers, owner, inplace = _buffers(steps, sizes, graph_inputs, graph_outputs)
    peak, peak_step = 0, ""
    for s, step in enumerate(steps):
        live = sum(size for (start, end, size) in buffers.values() if start <= s <= end)
        if live > peak:
            peak, peak_step = live, step.name
    if not steps:  # a graph that only passes inputs through
        peak = sum(size for (_, _, size) in buffers.values())
    return ArenaPlan(int(peak), _place(buffers), peak_step, [s.name for s in steps], inplace)


def _buffers(steps, sizes, graph_inputs, graph_outputs):
    """buffer id -> (first step, last step, bytes); in-place outputs share their input's id."""
    last_use: dict[str, int] = {}
    for s, step in enumerate(steps):
        for name in step.inputs:
            last_use[name] = s
    end = len(steps)
    owner: dict[str, str] = {}
    buffers: dict[str, list] = {}
    for name in graph_inputs:
        owner[name] = name
        buffers[name] = [0, end if name in graph_outputs else last_use.get(name, 0), sizes.get(name, 0)]
    inplace: dict[str, str] = {}
    for s, step in enumerate(steps):
        donors = [x for x in step.inputs if step.inplace and last_use.get(x) == s
                  and x not in graph_inputs and x not in graph_outputs and x in owner]
        for out in step.outputs:
            donor = next((x for x in donors if buffers[owner[x]][2] == sizes.get(out, 0)), None)
            stop = end if out in graph_outputs else last_use.get(out, s)
            if donor is not None:
                donors.remove(donor)
                owner[out] = owner[donor]
                buffers[owner[out]][1] = max(buffers[owner[out]][1], stop)
                inplace[out] = donor
            else:
                owner[out] = out
                buffers[out] = [s, stop, sizes.get(out, 0)]
    return {k: tuple(v) for k, v in buffers.items()}, owner, inplace


def _place(buffers: dict[str, tuple[int, int, int]]) -> int:
    placed: list[tuple[int, int, int, int]] = []   # (offset, size, start, end)
    top = 0
    for _, (start, end, size) in sorted(buffers.items(), key=lambda kv: (-kv[1][2], kv[0])):
        overlapping = sorted((o, sz) for (o, sz, st, en) in placed if st <= end and start <= en)
        offset = 0
        for o, sz in overlapping:
            if offset + size <= o:
                break
            offset = max(offset, o + sz)
        placed.append((offset, size, start, end))
        top = max(top, offset + size)
    return top


def best_order(steps: list[Step], sizes: dict[str, int], graph_inputs: set[str],
               graph_outputs: set[str]) -> tuple[list[Step], str]:
    """(order with the lowest peak found, note); the given order wins ties."""
    if len(steps) > MAX_SEARCH_STEPS:
        return steps, f"order search skipped: {len(steps)} steps > {MAX_SEARCH_STEPS}"
    base = plan_arena(steps, sizes, graph_inputs, graph_outputs).peak_bytes
    candidate = _beam(steps, sizes, graph_inputs, graph_outputs)
    if candidate is None:
        return steps, "order search found no complete order"
    peak = plan_arena(candidate, sizes, graph_inputs, graph_outputs).peak_bytes
    if peak < base:
        return candidate, f"reordered: peak {base} -> {peak} bytes"
    return steps, "given order is already the best found"


def _beam(steps, sizes, graph_inputs, graph_outputs):
    producer = {o: i for i, st in enumerate(steps) for o in st.outputs}
    deps = [{producer[x] for x in st.inputs if x in producer} for st in steps]
    readers: dict[str, set[int]] = {}
    for i, st in enumerate(steps):
        for x in st.inputs:
            readers.setdefault(x, set()).add(i)
    start_live = sum(sizes.get(x, 0) for x in graph_inputs)
    beam = [(0, start_live, (), frozenset())]   # (peak, live bytes, order, done)
    for _ in range(len(steps)):
        nxt = {}
        for peak, live, order, done in beam:
            for i in range(len(steps)):
                if i in done or not deps[i] <= done:
                    continue
                new = _advance(i, steps, sizes, readers, done, graph_inputs, graph_outputs, live)
                key = done | {i}
                cand = (max(peak, new[0]), new[1], order + (i,), key)
                if key not in nxt or cand[:2] < nxt[key][:2]:
                    nxt[key] = cand
        beam = sorted(nxt.values(), key=lambda c: (c[0], c[1], c[2]))[:BEAM_WIDTH]
        if not beam:
            return None
    return [steps[i] for i in beam[0][2]]


def _advance(i, steps, sizes, readers, done, graph_inputs, graph_outputs, live):
    """(bytes live while step i runs, bytes live after it) starting from `live`."""
    step = steps[i]
    finished = done | {i}
    dying = [x for x in step.inputs if readers.get(x, set()) <= finished
             and x not in graph_outputs and x not in graph_inputs]
    fresh, reusable, matched = 0, list(dying) if step.inplace else [], []
    for out in step.outputs:
        donor = next((x for x in reusable if sizes.get(x, 0) == sizes.get(out, 0)), None)
        if donor is not None:
            reusable.remove(donor)
            matched.append(donor)
        else:
            fresh += sizes.get(out, 0)
    during = live + fresh
    # Dying inputs are freed unless an output took their buffer over.
    after = during - sum(sizes.get(x, 0) for x in dying if x not in matched)
    dead_outputs = sum(sizes.get(o, 0) for o in step.outputs
                       if o not in readers and o not in graph_outputs)
    return during, after - dead_outputs
