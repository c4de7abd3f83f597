"""Fit verdict: does each memory level hold what must live there, and can every op run?

Demand per kind: weights = stored weight bytes; activations = the planned arena bytes
(memory.py), which a static allocator must reserve. A level smaller than its demand spills
to the next larger level that holds nothing by itself (a DRAM behind an NPU's SRAM):
slower but it still runs. With no such level (an MCU's flash and SRAM) the model does not
fit. Ops the target "cannot run" make it not fit either; ops that fall back are listed.
"""

from __future__ import annotations

import numpy as np

from graphopt.targets.schema import Target


def check_fit(target: Target, weight_bytes: float, plan, unsupported: dict) -> dict:
    demand = {"weights": weight_bytes, "activations": plan.arena_bytes}
    levels, messages, fits = [], [], True
    for kind, need in demand.items():
        home = target.level(kind)
        level = home
        ok = need <= home.capacity_bytes
        spill = ""
        if not ok:
            bigger = [lvl for lvl in target.memory[target.memory.index(home) + 1:]
                      if not lvl.holds and lvl.capacity_bytes >= need]
            spill = bigger[0].name if bigger else ""
        shared = sum(demand[k] for k in demand if k != kind and k in home.holds and kind in home.holds)
        levels.append({"kind": kind, "level": level.name, "capacity_bytes": home.capacity_bytes,
                       "required_bytes": int(np.ceil(need)), "fits": ok, "spills_to": spill})
        if not ok and spill:
            messages.append(f"{kind} ({_kb(need)}) exceed {home.name} ({_kb(home.capacity_bytes)}): "
                            f"spill to {spill}, slower")
        elif not ok:
            fits = False
            messages.append(f"{kind} ({_kb(need)}) do not fit {home.name} ({_kb(home.capacity_bytes)})")
        elif shared and need + shared > home.capacity_bytes and kind == "activations":
            messages.append(f"weights + activations ({_kb(need + shared)}) exceed {home.name} "
                            f"({_kb(home.capacity_bytes)}): weights stream from the next level")
    cannot = {op: e["count"] for op, e in unsupported.items() if e["action"] == "cannot run"}
    if cannot:
        fits = False
        messages.append("cannot run: " + ", ".join(f"{op} x{n}" for op, n in sorted(cannot.items())))
    elif unsupported:
        messages.append("falls back: " + ", ".join(f"{op} x{e['count']}" for op, e in sorted(unsupported.items())))
    if fits and not messages:
        messages.append("fits")
    return {"fits": fits, "levels": levels, "messages": messages}


def _kb(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"
