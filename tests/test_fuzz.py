"""Property-based fuzzing of `graphopt optimize` (in-process CLI) with hypothesis.

Properties (checked by fuzz_strategies.run_case): exit code in {0, 1, 2}, never a
traceback; exit 1 is one error line; the input file is never modified; only exit 0 writes
a model, and that model passes onnx.checker and verifies numerically against its input
(to 1e-5 relative for lossless pipelines, cosine >= 0.99 for lossy ones).

The default run is small and derandomized (same cases every CI run, ~30 s); the `slow`
tests and benchmarks/fuzz_long.py run thousands of cases.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fuzz_strategies import PIPELINES, DrawChooser, mutate, random_graph, run_case

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


def _case(data: bytes, pipeline: str, target: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return run_case(data, pipeline, Path(tmp), ("--target", target))


@settings(max_examples=40, **COMMON)
@given(st.data())
def test_random_valid_graphs(data):
    """Generated valid graphs: never a crash; a written model is valid and verified."""
    c = DrawChooser(data)
    model = random_graph(c)
    outcome = _case(model.SerializeToString(), c.pick(PIPELINES), c.pick(TARGETS))
    assert outcome["code"] in (0, 2)  # a valid runnable model is never refused as bad input


@settings(max_examples=50, **COMMON)
@given(st.data())
def test_mutated_real_models(data):
    """Bit flips, truncation, dropped/renamed/shuffled parts of the shipped digits models."""
    c = DrawChooser(data)
    models = _real_models(full=False)
    name = c.pick(sorted(models))
    mutated, _ = mutate(models[name], c)
    _case(mutated, c.pick(PIPELINES), c.pick(TARGETS))


@settings(max_examples=20, **COMMON)
@given(st.data())
def test_mutated_random_graphs(data):
    c = DrawChooser(data)
    mutated, _ = mutate(random_graph(c).SerializeToString(), c)
    _case(mutated, c.pick(PIPELINES), c.pick(TARGETS))


@pytest.mark.slow
@settings(max_examples=400, **COMMON)
@given(st.data())
def test_random_valid_graphs_long(data):
    c = DrawChooser(data)
    assert _case(random_graph(c).SerializeToString(), c.pick(PIPELINES), c.pick(TARGETS))["code"] in (0, 2)


@pytest.mark.slow
@settings(max_examples=400, **COMMON)
@given(st.data())
def test_mutated_real_models_long(data):
    c = DrawChooser(data)
    models = _real_models(full=True)
    name = c.pick(sorted(models))
    mutated, _ = mutate(models[name], c)
    _case(mutated, c.pick(PIPELINES), c.pick(TARGETS))
