"""Tiny inline-SVG chart helpers for the HTML report: bars, lines, heat maps, histograms.

No plotting library and no network: each function returns one `<svg>` element as text
with its own axes, labels and `<title>` tooltips carrying the exact values. Scales are
linear: a value v maps to pixel y = top + (1 - (v - lo) / (hi - lo)) * height.
"""

from __future__ import annotations

import math
from html import escape

WIDTH = 720
MARGIN = {"left": 64, "right": 16, "top": 28, "bottom": 84}
HEIGHT = 280
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"]


def fmt(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return escape(str(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}"


def _tick_label(value: float, step: float) -> str:
    """Enough decimals to tell neighbouring ticks apart (0.99990 vs 0.99995, not 1 vs 1)."""
    if step > 0 and step < 1 and abs(value) < 1e5:
        decimals = min(8, max(0, -math.floor(math.log10(step))) + (0 if step * 10 ** -math.floor(math.log10(step)) >= 1 else 1))
        return f"{value:.{decimals}f}"
    return fmt(value)


def _frame(title: str, body: list[str], width: int = WIDTH, height: int = HEIGHT) -> str:
    head = (f'<svg class="chart" width="{width}" height="{height}" '
            'font-family="sans-serif" font-size="10" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">')
    return "\n".join([head, f'<text x="{MARGIN["left"]}" y="16" font-weight="bold" font-size="12">{escape(title)}</text>',
                      *body, "</svg>"])


def _y_axis(lo: float, hi: float, step: float, top: float, height: float, label: str) -> list[str]:
    left = MARGIN["left"]
    out = [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + height}" stroke="#444"/>']
    ticks = max(1, round((hi - lo) / step))
    for i in range(ticks + 1):
        value = lo + step * i
        y = top + height - height * i / ticks
        out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{WIDTH - MARGIN["right"]}" y2="{y:.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(value, step)}</text>')
    out.append(f'<text x="14" y="{top + height / 2:.1f}" transform="rotate(-90 14 {top + height / 2:.1f})" '
               f'text-anchor="middle">{escape(label)}</text>')
    return out


def _nice_step(span: float, ticks: int = 4) -> float:
    """1, 2 or 5 times a power of ten, so that about `ticks` steps cover `span`."""
    raw = span / ticks if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _range(values: list[float], include_zero: bool = True) -> tuple[float, float, float]:
    """Axis limits on multiples of a nice step that cover the finite values."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        lo, hi = lo - (abs(lo) * 0.01 or 0.5), hi + (abs(hi) * 0.01 or 0.5)
    step = _nice_step(hi - lo)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    return (lo, hi, step) if hi > lo else (lo, lo + step, step)


def _x_label(x: float, y: float, text: str) -> str:
    short = text if len(text) <= 18 else "…" + text[-17:]
    return (f'<text x="{x:.1f}" y="{y:.1f}" transform="rotate(-40 {x:.1f} {y:.1f})" text-anchor="end">'
            f'<title>{escape(text)}</title>{escape(short)}</text>')


def bar_chart(title: str, groups: list[tuple[str, dict[str, float]]], series: list[str],
              y_label: str = "", tooltips: dict | None = None) -> str:
    """Grouped vertical bars: one group per label, one bar per series."""
    top, height = MARGIN["top"], HEIGHT - MARGIN["top"] - MARGIN["bottom"]
    lo, hi, step = _range([v for _, vals in groups for v in vals.values()])
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    slot = plot_w / max(len(groups), 1)
    bar_w = slot * 0.8 / max(len(series), 1)
    body = _y_axis(lo, hi, step, top, height, y_label)
    zero_y = top + height * (1 - (0 - lo) / (hi - lo))
    for g, (label, values) in enumerate(groups):
        x0 = MARGIN["left"] + g * slot + slot * 0.1
        for s, name in enumerate(series):
            value = values.get(name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            y = top + height * (1 - (value - lo) / (hi - lo))
            tip = (tooltips or {}).get((label, name), f"{label} {name}: {fmt(value)}")
            body.append(f'<rect x="{x0 + s * bar_w:.1f}" y="{min(y, zero_y):.1f}" width="{bar_w * 0.92:.1f}" '
                        f'height="{abs(zero_y - y):.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                        f'<title>{escape(tip)}</title></rect>')
        body.append(_x_label(x0 + slot * 0.4, top + height + 14, label))
    body += _legend(series)
    return _frame(title, body)


def _legend(series: list[str]) -> list[str]:
    out = []
    for i, name in enumerate(series):
        x = WIDTH - MARGIN["right"] - 120 * (len(series) - i)
        out.append(f'<rect x="{x}" y="22" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                   f'<text x="{x + 14}" y="31">{escape(name)}</text>')
    return out


def line_chart(title: str, labels: list[str], series: dict[str, list[float | None]], y_label: str = "",
               highlight: int | None = None, include_zero: bool = False, max_labels: int = 40) -> str:
    """Lines with point markers over categorical x positions; `highlight` circles one x."""
    top, height = MARGIN["top"], HEIGHT - MARGIN["top"] - MARGIN["bottom"]
    lo, hi, step = _range([v for vals in series.values() for v in vals if v is not None], include_zero)
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    x_step = plot_w / max(len(labels), 1)
    xs = [MARGIN["left"] + x_step * (i + 0.5) for i in range(len(labels))]
    body = _y_axis(lo, hi, step, top, height, y_label)

    def y_of(v: float) -> float:
        return top + height * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

    for s, (name, values) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        points = [(xs[i], y_of(v), labels[i], v) for i, v in enumerate(values)
                  if isinstance(v, (int, float)) and math.isfinite(v)]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for x, y, label, v in points:
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                        f'<title>{escape(label)} {escape(name)}: {fmt(v)}</title></circle>')
    if highlight is not None and 0 <= highlight < len(xs):
        body.append(f'<line x1="{xs[highlight]:.1f}" y1="{top}" x2="{xs[highlight]:.1f}" y2="{top + height}" '
                    f'stroke="#e15759" stroke-dasharray="4 3"><title>{escape(labels[highlight])}</title></line>')
    every = max(1, math.ceil(len(labels) / max_labels))
    body += [_x_label(xs[i], top + height + 14, labels[i]) for i in range(0, len(labels), every)]
    if len(series) > 1:
        body += _legend(list(series))
    return _frame(title, body)


def heatmap(title: str, rows: list[tuple[str, list[float]]], lo: float = 0.0, hi: float = 1.0,
            value_label: str = "") -> str:
    """Rows of cells coloured white (lo) to dark blue (hi); rows may have different lengths."""
    cell_h = 16
    label_w = 200
    height = MARGIN["top"] + cell_h * len(rows) + 36
    body = []
    for r, (label, values) in enumerate(rows):
        y = MARGIN["top"] + r * cell_h
        short = label if len(label) <= 30 else "…" + label[-29:]
        body.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end"><title>{escape(label)}</title>'
                    f'{escape(short)}</text>')
        width = (WIDTH - label_w - MARGIN["right"]) / max(len(values), 1)
        for c, value in enumerate(values):
            body.append(f'<rect x="{label_w + c * width:.1f}" y="{y}" width="{width:.1f}" height="{cell_h - 1}" '
                        f'fill="{_blue(value, lo, hi)}" stroke="#ccc" stroke-width="0.5"><title>{escape(label)} [{c}]: {fmt(value)}</title></rect>')
    y = MARGIN["top"] + cell_h * len(rows) + 20
    body.append(f'<text x="{label_w}" y="{y}">{fmt(lo)} (white) … {fmt(hi)} (dark) {escape(value_label)}</text>')
    return _frame(title, body, height=height)


def _blue(value: float, lo: float, hi: float) -> str:
    t = 0.0 if hi == lo else min(max((value - lo) / (hi - lo), 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * t) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def histogram(title: str, values: list[float], bins: int = 20, x_label: str = "") -> str:
    """Counts of `values` in equal-width bins over their range."""
    finite = sorted(v for v in values if isinstance(v, (int, float)) and math.isfinite(v))
    if not finite:
        return _frame(title, [f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no finite values</text>'])
    lo, hi = finite[0], finite[-1]
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = max(1, min(bins, len(finite)))
    counts = [0] * bins
    for v in finite:
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    groups = [(f"{fmt(edges[i])}–{fmt(edges[i + 1])}", {"count": counts[i]}) for i in range(bins)]
    return bar_chart(f"{title} ({x_label})" if x_label else title, groups, ["count"], y_label="count")
