"""HTML report: one self-contained file (inline CSS and SVG, no scripts, no network).

Sections, each drawn only when the report has its data:
- cost per target before/after: bars of after/before per metric (1.0 = unchanged),
  from `cost` ({"before", "after"} for `target`, or {target: {"before", "after"}});
- per-pass timeline: seconds per pass and the verification cosine/SNR of each pass;
- bisect (from `graphopt bisect --report`): each step against the original, the failing
  pass, the sites responsible and each site's error applied alone;
- per-layer error along depth: SNR per tensor in topological order, from `explain`;
- per-layer sparsity heat map: fraction of zero weights per output-channel bin, from
  `layers` (graphopt.debug.layer_stats rows);
- quantization error histograms of weights and activations: per-layer numbers found in
  `quantization` or in the stats of quantize passes, and QDQ activations in `explain`.
"""

from __future__ import annotations

import math
from html import escape

from graphopt.report.svg import bar_chart, fmt, heatmap, histogram, line_chart

COST_KEYS = ("macs", "params", "weight_bytes", "peak_activation_bytes", "latency_ms", "energy_mj")
QUANT_METRICS = ("snr_db", "relative_error", "max_abs_error", "mse", "cosine", "error")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:980px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:.9em} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} .fail{color:#b00020;font-weight:bold} .ok{color:#1b7f3b}
svg.chart{display:block;margin:8px 0;font-size:10px} svg .title{font-size:12px;font-weight:bold}
svg .axis{stroke:#444} svg .grid{stroke:#eee} svg .highlight{stroke:#e15759;stroke-dasharray:4 3}
.note{color:#666;font-size:.9em}
"""


def render_html(report: dict) -> str:
    """The report as one HTML document; sections without data are left out."""
    report = report or {}
    sections = [_summary(report), _bisect(report.get("bisect")), _cost(report.get("cost"), report.get("target")), _timeline(report.get("passes")),
                _depth(report.get("explain")), _sparsity(report.get("layers")), _quantization(report)]
    body = "\n".join(s for s in sections if s)
    title = f"graphopt report — {report.get('target', '')}".strip(" —")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{escape(title)}</h1>\n{body}\n</body></html>\n")


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{escape(h)}</th>' for i, h in enumerate(header))
    lines = [f"<table><tr>{head}</tr>"]
    for row in rows:
        cells = "".join(f'<td class="{"l" if i < left else ""}">{_cell(v)}</td>' for i, v in enumerate(row))
        lines.append(f"<tr>{cells}</tr>")
    return "\n".join(lines + ["</table>"])


def _cell(value) -> str:
    if isinstance(value, _Raw):
        return value.html
    return fmt(value)


class _Raw:
    """Already-escaped HTML for a table cell."""

    def __init__(self, html: str):
        self.html = html


def _status(passed) -> _Raw:
    if passed is None:
        return _Raw("")
    return _Raw('<span class="ok">passed</span>' if passed else '<span class="fail">FAILED</span>')


def _summary(report: dict) -> str:
    parts = []
    if report.get("pipeline"):
        parts.append(f"<p>Pipeline: <code>{escape(str(report['pipeline']))}</code></p>")
    if report.get("error"):
        parts.append(f'<p class="fail">Error: {escape(str(report["error"]))}</p>')
    before, after = report.get("input") or {}, report.get("output") or {}
    if before or after:
        rows = [[label, s.get("nodes"), s.get("params"), s.get("bytes")] for label, s in
                (("input", before), ("output", after)) if s]
        parts.append(_table(["model", "nodes", "params", "bytes"], rows))
    verification = report.get("verification") or {}
    if verification:
        parts.append(f"<h2>Verification</h2><p>{_status(verification.get('passed')).html}"
                     + (f" ({escape(str(verification['skipped']))})" if verification.get("skipped") else "") + "</p>")
        rows = [[name, *(m.get(k) for k in ("cosine", "snr_db", "max_abs_error", "top1_agreement"))]
                for name, m in (verification.get("outputs") or {}).items() if isinstance(m, dict)]
        if rows:
            parts.append(_table(["output", "cosine", "SNR dB", "max abs error", "top-1 agreement"], rows))
        parts += [f'<p class="fail">{escape(str(f))}</p>' for f in verification.get("failures") or []]
    return "\n".join(parts)


def _bisect(result) -> str:
    if not isinstance(result, dict) or not result.get("steps"):
        return ""
    parts = ["<h2>Bisect</h2>", f"<p>Pipeline <code>{escape(str(result.get('pipeline', '')))}</code>, thresholds "
             + escape(", ".join(f"{k}={v}" for k, v in (result.get("thresholds") or {}).items())) + "</p>"]
    rows = [[f"{r.get('step')}. {r.get('name')}", _status(r.get("passed")), r.get("cosine"), r.get("snr_db"),
             r.get("sites"), "; ".join(r.get("failures") or []) or r.get("error", "")] for r in result["steps"]]
    parts.append(_table(["pass", "vs. original", "cosine", "SNR dB", "sites", "failures"], rows))
    culprit = result.get("culprit")
    if not culprit:
        parts.append('<p class="ok">No pass breaks the thresholds.</p>')
        return "\n".join(parts)
    parts.append(f'<p class="fail">First failing pass: {escape(str(culprit.get("name")))} '
                 f'(step {culprit.get("step")})</p>')
    if culprit.get("localized"):
        parts.append("<p>Revert these sites and the pass meets the thresholds: <code>"
                     + escape(", ".join(culprit.get("sites") or [])) + "</code></p>")
    else:
        parts.append(f'<p class="note">Sites not localized: {escape(str(culprit.get("note", "")))}</p>')
    impact = [r for r in culprit.get("site_impact") or [] if isinstance(r.get("snr_db"), (int, float))]
    if impact:
        parts.append(bar_chart("output SNR with only this site applied (dB)",
                               [(r["site"], {"SNR dB": _cap(r["snr_db"])}) for r in impact], ["SNR dB"], "dB"))
    return "\n".join(parts)


def _cost_by_target(cost, target) -> dict:
    if not isinstance(cost, dict) or not cost:
        return {}
    if "before" in cost or "after" in cost:
        return {str(target or "target"): cost}
    return {str(t): c for t, c in cost.items() if isinstance(c, dict) and ("before" in c or "after" in c)}


def _cost(cost, target) -> str:
    by_target = _cost_by_target(cost, target)
    if not by_target:
        return ""
    parts = ["<h2>Cost per target</h2>"]
    for name, c in by_target.items():
        before, after = c.get("before") or {}, c.get("after") or {}
        if before.get("error") or after.get("error"):
            parts.append(f'<p class="note">{escape(name)}: cost model failed: '
                         f'{escape(str(before.get("error") or after.get("error")))}</p>')
            continue
        keys = [k for k in COST_KEYS if _number(before.get(k)) and _number(after.get(k)) is not None]
        if not keys:
            continue
        groups = [(k, {"before": 1.0, "after": after[k] / before[k]}) for k in keys]
        tips = {(k, s): f"{k} {s}: {fmt(before[k] if s == 'before' else after[k])}" for k in keys
                for s in ("before", "after")}
        parts.append(bar_chart(f"{name}: after / before (1 = unchanged)", groups, ["before", "after"],
                               "relative to before", tips))
        rows = [[k, before[k], after[k], after[k] / before[k]] for k in keys]
        if "fits" in after:
            rows.append(["fits", before.get("fits"), after.get("fits"), ""])
        parts.append(_table(["metric", "before", "after", "ratio"], rows))
    return "\n".join(parts) if len(parts) > 1 else ""


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value or None


def _timeline(passes) -> str:
    if not passes:
        return ""
    labels = [f"{i}. {p.get('name', '?')}" for i, p in enumerate(passes, 1)]
    seconds = [p.get("seconds") if isinstance(p.get("seconds"), (int, float)) else 0.0 for p in passes]
    verifications = [p.get("verification") or {} for p in passes]
    cosine = [v.get("cosine") if isinstance(v.get("cosine"), (int, float)) else None for v in verifications]
    snr = [_cap(v.get("snr_db")) for v in verifications]
    parts = ["<h2>Passes</h2>", bar_chart("seconds per pass", [(l, {"seconds": s}) for l, s in zip(labels, seconds)],
                                          ["seconds"], "seconds")]
    if any(c is not None for c in cosine):
        parts.append(line_chart("output cosine after each pass (vs. its input)", labels, {"cosine": cosine}, "cosine"))
    if any(s is not None for s in snr):
        parts.append(line_chart("output SNR after each pass (dB, vs. its input)", labels, {"SNR dB": snr}, "dB"))
    rows = []
    for label, p, v in zip(labels, passes, verifications):
        state = "rolled back" if p.get("rolled_back") else ("failed" if p.get("failed") else
                                                            ("skipped" if v.get("skipped") else None))
        stats = ", ".join(f"{k}={fmt(x)}" for k, x in (p.get("stats") or {}).items()
                          if isinstance(x, (int, float)) and not isinstance(x, bool) and x)[:160]
        rows.append([label, str(p.get("changed")), f"{p.get('nodes_before')}→{p.get('nodes_after')}",
                     p.get("seconds"), _Raw(escape(state)) if state else _status(v.get("passed")),
                     v.get("cosine"), v.get("snr_db"), stats])
    parts.append(_table(["pass", "changed", "nodes", "seconds", "verification", "cosine", "SNR dB", "stats"],
                        rows, left=3))
    return "\n".join(parts)


def _cap(value):
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    return max(min(value, 140.0), -140.0)


def _depth(explained) -> str:
    layers = (explained or {}).get("layers") or []
    rows = [r for r in layers if isinstance(r, dict) and "snr_db" in r]
    if not rows:
        return ""
    labels = [f"{r.get('tensor')}" + (" [qdq]" if r.get("via") == "qdq" else "") for r in rows]
    ranking = explained.get("ranking") or []
    top = ranking[0] if ranking else None
    highlight = next((i for i, r in enumerate(rows) if top and r.get("tensor") == top.get("tensor")
                      and r.get("candidate") == top.get("candidate")), None)
    parts = ["<h2>Error along depth</h2>",
             line_chart("SNR per tensor in topological order (dB; dashed: largest error jump)", labels,
                        {"SNR dB": [_cap(r["snr_db"]) for r in rows]}, "dB", highlight=highlight),
             line_chart("cosine per tensor in topological order", labels,
                        {"cosine": [r.get("cosine") for r in rows]}, "cosine", highlight=highlight)]
    table = [[r.get("tensor"), r.get("op_type"), r.get("introduced_db"), r.get("snr_db"), r.get("cosine"),
              r.get("max_abs_error")] for r in ranking[:10]]
    if table:
        parts.append("<p>Where the error appears (largest introduced error first):</p>")
        parts.append(_table(["tensor", "op", "introduced dB", "SNR dB", "cosine", "max abs"], table, left=2))
    return "\n".join(parts)


def _sparsity(layers) -> str:
    rows = []
    for row in layers or []:
        if not isinstance(row, dict):
            continue
        cells = row.get("channel_zero_fraction") or ([row["zero_fraction"]] if "zero_fraction" in row else None)
        if cells:
            label = f"{row.get('node') or row.get('weight')} ({fmt(row.get('zero_fraction', 0))})"
            rows.append((label, [float(c) for c in cells]))
    if not rows:
        return ""
    return "\n".join(["<h2>Weight sparsity per layer</h2>",
                      heatmap("fraction of zero weights per output-channel bin", rows, 0.0, 1.0, "zero fraction")])


def _quantization(report: dict) -> str:
    found = quantization_errors(report)
    parts = []
    for kind in ("weights", "activations"):
        metric, values = found.get(kind, (None, []))
        if values:
            parts.append(histogram(f"{kind}: per-layer quantization error", [v for _, v in values], 20, metric))
    return "\n".join(["<h2>Quantization error</h2>", *parts]) if parts else ""


def quantization_errors(report: dict) -> dict[str, tuple[str, list[tuple[str, float]]]]:
    """{"weights" | "activations": (metric, [(layer, value)])} from whatever the report holds."""
    sources: dict[str, list] = {"weights": [], "activations": []}
    explicit = report.get("quantization")
    if isinstance(explicit, dict):
        for kind in sources:
            sources[kind].append((kind, explicit.get(kind)))
    for p in report.get("passes") or []:
        if "quant" not in str(p.get("name", "")):
            continue
        for key, value in (p.get("stats") or {}).items():
            kind = "weights" if "weight" in key else ("activations" if "activ" in key else None)
            if kind and isinstance(value, (dict, list)):
                sources[kind].append((key, value))
    result = {kind: _per_layer(items) for kind, items in sources.items()}
    qdq = [r for r in ((report.get("explain") or {}).get("layers") or []) if r.get("via") == "qdq" and "snr_db" in r]
    if qdq and not result["activations"][1]:
        result["activations"] = ("snr_db", [(r["tensor"], r["snr_db"]) for r in qdq])
    return result


def _per_layer(items: list) -> tuple[str | None, list[tuple[str, float]]]:
    """Pick one metric present in the per-layer entries and list (layer, value).

    Entries are {layer: number} (the metric is named by the stats key, e.g. quantize's
    "weight_error" = relative error per layer), {layer: {metric: number}} or
    [{"name": layer, metric: number}]."""
    entries: list[tuple[str, object]] = []
    numeric_key = None
    for key, item in items:
        if isinstance(item, dict):
            entries += list(item.items())
        elif isinstance(item, list):
            entries += [(str(e.get("name") or e.get("node") or i), e) for i, e in enumerate(item) if isinstance(e, dict)]
        if isinstance(item, dict) and any(isinstance(v, (int, float)) for v in item.values()):
            numeric_key = numeric_key or key
    numeric = [(k, float(v)) for k, v in entries if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numeric:
        return numeric_key, numeric
    for metric in QUANT_METRICS:
        values = [(k, float(v[metric])) for k, v in entries
                  if isinstance(v, dict) and isinstance(v.get(metric), (int, float))]
        if values:
            return metric, values
    return None, []
