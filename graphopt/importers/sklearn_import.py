"""scikit-learn estimators and pipelines (pickle / joblib files) -> ONNX via skl2onnx.

The input is one float32 matrix `input` of shape (batch, n_features_in_), batch dynamic;
n_features_in_ is read from the fitted estimator (or given with input_shapes `input:1x64`).
Classifiers are converted without ZipMap, so probabilities come out as a plain
(batch, classes) tensor; the reference is then [predict(X), predict_proba(X)]
(decision_function when there is no predict_proba), regressors [predict(X)], and
transformers [transform(X)], computed by scikit-learn itself.

skl2onnx treats the opset as a ceiling: the model gets the lowest opset its operators need.
Loading a pickle runs code from the file: only import files you trust.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

import numpy as np

from graphopt.errors import InputError
from graphopt.importers.sources import ImportedModel, parse_input_shapes

log = logging.getLogger(__name__)

SKLEARN_EXTRA = "pip install 'graphopt[sklearn]'"
INPUT_NAME = "input"
EXAMPLE_ROWS = 8


def load_estimator(path):
    path = Path(path)
    try:
        import joblib  # ships with scikit-learn; reads plain pickles too

        return joblib.load(path)
    except ImportError:
        pass
    except Exception as err:
        raise InputError(f"{path}: cannot unpickle ({type(err).__name__}: {err})") from err
    try:
        with path.open("rb") as handle:
            return pickle.load(handle)
    except Exception as err:
        raise InputError(f"{path}: cannot unpickle ({type(err).__name__}: {err})") from err


def _final_step(estimator):
    steps = getattr(estimator, "steps", None)
    return _final_step(steps[-1][1]) if steps else estimator


def _feature_count(estimator, input_shapes) -> int:
    specs = parse_input_shapes(input_shapes) if isinstance(input_shapes, str) else list(input_shapes or [])
    count = getattr(estimator, "n_features_in_", None)
    if specs:
        if len(specs) != 1 or len(specs[0].shape) != 2:
            raise InputError("scikit-learn models take one 2-D input: --input-shapes input:1xFEATURES")
        if count is not None and int(count) != specs[0].shape[1]:
            raise InputError(f"--input-shapes gives {specs[0].shape[1]} features but "
                             f"{type(estimator).__name__} was fitted on {int(count)}")
        return specs[0].shape[1]
    if count is None:
        raise InputError(f"{type(estimator).__name__} does not record n_features_in_ (not fitted?); "
                         "pass --input-shapes input:1xFEATURES")
    return int(count)


def import_sklearn(path, input_shapes=None, opset: int = 17) -> ImportedModel:
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.base import is_classifier
    except ImportError as err:
        raise InputError(f"{path}: importing scikit-learn models needs scikit-learn and skl2onnx "
                         f"({SKLEARN_EXTRA})") from err
    estimator = load_estimator(path)
    if not hasattr(estimator, "fit"):
        raise InputError(f"{path}: holds a {type(estimator).__name__}, not a scikit-learn estimator")
    features = _feature_count(estimator, input_shapes)
    final = _final_step(estimator)
    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    try:
        with warnings.catch_warnings():  # skl2onnx reads attributes newer sklearn deprecates
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            model = convert_sklearn(estimator, initial_types=[(INPUT_NAME, FloatTensorType([None, features]))],
                                    target_opset=opset, options=options)
    except Exception as err:  # skl2onnx raises RuntimeError/NotImplementedError for unknown estimators
        raise InputError(f"{path}: skl2onnx cannot convert {type(estimator).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    rng = np.random.default_rng(0)
    feeds = {INPUT_NAME: rng.standard_normal((EXAMPLE_ROWS, features)).astype(np.float32)}
    return ImportedModel(model, "scikit-learn", _reference(estimator, is_classifier(estimator)), feeds, "skl2onnx")


def _reference(estimator, classifier: bool):
    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = np.asarray(feeds[INPUT_NAME], dtype=np.float32)
        if classifier:
            scores = (estimator.predict_proba(x) if hasattr(estimator, "predict_proba")
                      else estimator.decision_function(x))
            return [estimator.predict(x), scores]
        if hasattr(estimator, "predict"):
            return [estimator.predict(x)]
        return [estimator.transform(x)]

    return reference
