"""Report renderers: JSON (the contract), Markdown (terminals, CI logs), HTML (plots)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from graphopt.errors import InputError
from graphopt.ir.io import set_default_permissions
from graphopt.report.markdown import render_markdown


def to_json(report: dict) -> str:
    return json.dumps(_jsonable(report), indent=2, sort_keys=False)


def _jsonable(value):
    """Plain JSON: infinities and NaN become strings, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def render(report: dict, fmt: str) -> str:
    if fmt == "json":
        return to_json(report)
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        from graphopt.report.html import render_html

        return render_html(report)
    raise InputError(f"unknown report format {fmt!r} (json, md, html)")


def write_report(report: dict, path) -> Path:
    """Write the report in the format its suffix names, atomically."""
    path = Path(path)
    fmt = {".json": "json", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: report must end in .json, .md or .html")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: report directory does not exist")
    text = render(report, fmt)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    set_default_permissions(tmp)
    os.replace(tmp, path)
    return path
