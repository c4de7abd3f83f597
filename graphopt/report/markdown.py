"""Markdown summary of an optimize report, for terminals and CI logs."""

from __future__ import annotations


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(report: dict) -> str:
    lines = [f"# graphopt report — target `{report.get('target', '?')}`", ""]
    if "pipeline" in report:
        lines += [f"Pipeline: `{report['pipeline']}`", ""]
    lines += _size_table(report)
    lines += _pass_table(report.get("passes", []))
    lines += _cost_table(report.get("cost", {}))
    lines += _verification(report.get("verification", {}))
    return "\n".join(lines) + "\n"


def _size_table(report) -> list[str]:
    before, after = report.get("input", {}), report.get("output", {})
    rows = ["| | nodes | params | bytes |", "|---|---:|---:|---:|",
            f"| input | {before.get('nodes', '')} | {before.get('params', '')} | {before.get('bytes', '')} |"]
    if after:
        rows.append(f"| output | {after.get('nodes')} | {after.get('params')} | {after.get('bytes')} |")
    return rows + [""]


def _pass_table(passes) -> list[str]:
    if not passes:
        return []
    rows = ["## Passes", "", "| # | pass | changed | nodes | seconds | verification | stats |",
            "|---:|---|---|---|---:|---|---|"]
    for i, p in enumerate(passes, 1):
        v = p.get("verification", {})
        check = "rolled back" if p.get("rolled_back") else (
            "skipped" if v.get("skipped") else f"{'ok' if v.get('passed') else 'FAIL'} cos={_fmt(v.get('cosine', 1.0))}")
        stats = ", ".join(f"{k}={_fmt(v)}" for k, v in p.get("stats", {}).items()
                          if isinstance(v, (int, float)) and v)[:160]
        rows.append(f"| {i} | {p['name']} | {p.get('changed')} | {p.get('nodes_before')}→{p.get('nodes_after')} "
                    f"| {_fmt(p.get('seconds', 0))} | {check} | {stats} |")
    return rows + [""]


def _cost_table(cost) -> list[str]:
    before, after = cost.get("before"), cost.get("after")
    if not before:
        return []
    keys = [k for k in ("macs", "params", "weight_bytes", "peak_activation_bytes", "latency_ms", "energy_mj", "fits")
            if k in before]
    rows = ["## Cost", "", "| metric | before | after | ratio |", "|---|---:|---:|---:|"]
    for k in keys:
        b, a = before.get(k), (after or {}).get(k)
        ratio = f"{a / b:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and not isinstance(b, bool) else ""
        rows.append(f"| {k} | {_fmt(b)} | {_fmt(a)} | {ratio} |")
    return rows + [""]


def _verification(v) -> list[str]:
    if not v:
        return []
    lines = ["## Verification", "", f"Passed: **{v.get('passed')}**" + (f" ({v['skipped']})" if v.get("skipped") else "")]
    for name, m in v.get("outputs", {}).items():
        parts = ", ".join(f"{k}={_fmt(m[k])}" for k in ("max_abs_error", "cosine", "snr_db", "top1_agreement") if k in m)
        lines.append(f"- `{name}`: {parts}")
    for failure in v.get("failures", []):
        lines.append(f"- FAILED: {failure}")
    return lines + [""]
