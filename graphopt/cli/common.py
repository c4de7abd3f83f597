"""Argument groups shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from graphopt.errors import InputError


def add_threshold_arguments(parser: argparse.ArgumentParser, default_cosine: float | None = None) -> None:
    group = parser.add_argument_group("thresholds", "accept the result only if every output meets these")
    group.add_argument("--min-cosine", type=float, default=default_cosine, help="minimum cosine similarity")
    group.add_argument("--min-snr-db", type=float, help="minimum signal-to-noise ratio in dB")
    group.add_argument("--min-top1", dest="min_top1_agreement", type=float, help="minimum top-1 agreement (0-1)")
    group.add_argument("--max-abs-error", type=float, help="maximum absolute error")


def thresholds_from(args) -> dict:
    keys = ("min_cosine", "min_snr_db", "min_top1_agreement", "max_abs_error")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def check_output_path(output, inputs, force: bool) -> None:
    """Refuse before doing any work: existing output without --force, or output == input."""
    out = Path(output)
    for source in inputs:
        if source and Path(source).exists() and out.exists() and out.resolve() == Path(source).resolve():
            raise InputError(f"{out}: output would overwrite the input; choose another path")
    if out.exists() and not force:
        raise InputError(f"{out}: output exists (use --force to overwrite)")
    if not out.parent.exists():
        raise InputError(f"{out.parent}: output directory does not exist")
