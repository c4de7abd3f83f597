"""Meta-tests over the pass registry: docs, names, and every pass on the bundled models."""

from __future__ import annotations

import re

import onnx
import pytest

import graphopt
from graphopt.passes import describe_options, registry

REAL_PASSES = sorted(name for name in registry() if not name.startswith("test-"))
MODELS = ["digits_cnn", "digits_mlp", "digits_transformer"]


def test_contract_pass_names_are_registered():
    for name in ("cleanup", "fuse", "prune-channels", "lowrank", "sparsity-2to4", "quantize"):
        if name not in REAL_PASSES:
            pytest.fail(f"pass {name!r} from the design contract is not registered")


@pytest.mark.parametrize("name", REAL_PASSES)
def test_every_pass_is_documented(name):
    cls = registry()[name]
    assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name)
    assert cls.summary and "\n" not in cls.summary
    assert cls.__module__ and (cls.__doc__ or "").strip() or cls.summary
    for opt in describe_options(cls.Options):
        assert opt["doc"], f"{name}.{opt['name']} has no doc"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", REAL_PASSES)
def test_every_pass_survives_verification_on_bundled_models(name, model, digits_calib_path):
    from models import zoo

    result = graphopt.optimize(str(getattr(zoo, model)()), passes=f"cleanup,{name}",
                               calibration_data=digits_calib_path)
    record = result.report["passes"][-1]
    assert record["name"] == name
    onnx.checker.check_model(result.model, full_check=True)
    if record["changed"]:
        assert "verification" in record and record["verification"].get("passed") is not None
        if registry()[name](**record["options"]).is_lossless():
            assert record["verification"]["passed"]
    else:
        assert result.report["output"]["nodes"] == result.report["passes"][0]["nodes_after"]
