"""Property-based fuzzing of `graphopt optimize` (in-process CLI) with hypothesis.

Properties (checked by fuzz_strategies.run_case): exit code in {0, 1, 2}, never a
traceback; exit 1 is one error line; the input file is never modified; only exit 0 writes
a model, and that model passes onnx.checker and verifies numerically against its input
(to 1e-5 relative for lossless pipelines, cosine >= 0.99 for lossy ones).

The default run (620 cases) is derandomized (same cases every CI run, ~25 s on one idle core); the `slow`
tests and benchmarks/fuzz_long.py run thousands of cases.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fuzz_strategies import PIPELINES, DrawChooser, Finding, mutate, random_graph, run_case

TARGETS = ("cpu", "gpu", "npu", "mcu")
# no shrinking by default: a CLI run costs ~0.2 s and shrinking can take minutes; the
# failing draws are printed, and fuzz_long.py --seed reproduces its cases exactly
COMMON = dict(derandomize=True, deadline=None, database=None,
              phases=(Phase.explicit, Phase.generate),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _real_models(full: bool) -> dict[str, bytes]:
    from models import zoo

    makers = [zoo.digits_cnn, zoo.digits_mlp, zoo.digits_transformer]
    if full:
        makers += [zoo.ppocr_cls, zoo.silero_vad, zoo.magika]
    found = {}
    for make in makers:
        try:
            found[make.__name__] = make().read_bytes()
        except FileNotFoundError:  # optional pip package missing
            continue
    return found


# Findings in passes owned by others, reported and not yet fixed: (kind, regex, reason).
# Only an exact match is excused; anything else fails the test.
KNOWN = [
    ("exit3", r"pass 'lowrank' .*LinAlgError: SVD did not converge",
     "lowrank bug: a NaN/Inf in a weight (or a Gemm alpha) reaches numpy's SVD, which raises LinAlgError; "
     "the site should be skipped with a reason (repro: Gemm with one NaN weight, lowrank{energy=0.99,min_size=0})"),
]


_excused: list[str] = []  # reasons of KNOWN findings met during the current test


def _case(data: bytes, pipeline: str, target: str) -> dict:
    """run_case; a KNOWN finding is noted (the test xfails at its end) and the example passes."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return run_case(data, pipeline, Path(tmp), ("--target", target))
        except Finding as found:
            for kind, pattern, reason in KNOWN:
                if found.kind == kind and re.search(pattern, found.message):
                    _excused.append(reason)
                    return {"code": 3, "message": found.message}
            raise


def _run(hypothesis_test) -> None:
    """Run every example of a @given function, then xfail if a KNOWN finding showed up."""
    _excused.clear()
    hypothesis_test()
    if _excused:
        pytest.xfail(f"{len(_excused)} known finding(s): " + "; ".join(sorted(set(_excused))))


@settings(max_examples=250, **COMMON)
@given(st.data())
def _random_valid_graphs(data):
    c = DrawChooser(data)
    model = random_graph(c)
    outcome = _case(model.SerializeToString(), c.pick(PIPELINES), c.pick(TARGETS))
    assert outcome["code"] in (0, 2, 3)  # a valid runnable model is never refused as bad input (3: KNOWN only)


def test_random_valid_graphs():
    """Generated valid graphs: never a crash; a written model is valid and verified."""
    _run(_random_valid_graphs)


@settings(max_examples=250, **COMMON)
@given(st.data())
def _mutated_real_models(data):
    c = DrawChooser(data)
    models = _real_models(full=False)
    name = c.pick(sorted(models))
    mutated, _ = mutate(models[name], c)
    _case(mutated, c.pick(PIPELINES), c.pick(TARGETS))


def test_mutated_real_models():
    """Bit flips, truncation, dropped/renamed/shuffled parts of the shipped digits models."""
    _run(_mutated_real_models)


@settings(max_examples=120, **COMMON)
@given(st.data())
def _mutated_random_graphs(data):
    c = DrawChooser(data)
    mutated, _ = mutate(random_graph(c).SerializeToString(), c)
    _case(mutated, c.pick(PIPELINES), c.pick(TARGETS))


def test_mutated_random_graphs():
    _run(_mutated_random_graphs)


@settings(max_examples=2000, **COMMON)
@given(st.data())
def _random_valid_graphs_long(data):
    c = DrawChooser(data)
    assert _case(random_graph(c).SerializeToString(), c.pick(PIPELINES), c.pick(TARGETS))["code"] in (0, 2, 3)


@pytest.mark.slow
def test_random_valid_graphs_long():
    _run(_random_valid_graphs_long)


@settings(max_examples=2000, **COMMON)
@given(st.data())
def _mutated_real_models_long(data):
    c = DrawChooser(data)
    models = _real_models(full=True)
    name = c.pick(sorted(models))
    mutated, _ = mutate(models[name], c)
    _case(mutated, c.pick(PIPELINES), c.pick(TARGETS))


@pytest.mark.slow
def test_mutated_real_models_long():
    _run(_mutated_real_models_long)
