"""HuggingFace model directories -> ONNX (needs transformers; sentence-transformers optional).

A directory with `config.json` loads with transformers' AutoModel, offline. When it also has
a sentence-transformers `modules.json` and that package is installed, the whole embedding
pipeline (transformer, pooling, normalize) is exported, with one output
`sentence_embedding`; otherwise the bare model's outputs (`last_hidden_state`, ...).

Inputs are the tokenizer's tensors the model's forward takes (`input_ids`,
`attention_mask`, `token_type_ids` where it has them), traced at batch 2 x sequence 11
with seeded token ids below the vocabulary size and a padded second row, so that masking is
exercised; `batch` and `sequence` stay dynamic.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from pathlib import Path

import numpy as np

from graphopt.errors import InputError
from graphopt.importers.sources import ImportedModel
from graphopt.importers.torch_import import DEFAULT_OPSET, export, module_reference, require_torch

log = logging.getLogger(__name__)

HF_EXTRA = "pip install 'graphopt[torch,models]'"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXAMPLE_BATCH, EXAMPLE_SEQUENCE = 2, 11  # distinct from every hidden size, so axes are unambiguous


def _wrappers(torch):
    class SentenceEmbedding(torch.nn.Module):
        """sentence-transformers pipeline with positional tensor inputs."""

        def __init__(self, pipeline, names):
            super().__init__()
            self.pipeline, self.names = pipeline, list(names)

        def forward(self, *tensors):
            return self.pipeline(dict(zip(self.names, tensors)))["sentence_embedding"]

    class PositionalModel(torch.nn.Module):
        """transformers model called with keyword inputs, returning its outputs as a tuple."""

        def __init__(self, model, names):
            super().__init__()
            self.model, self.names = model, list(names)

        def forward(self, *tensors):
            out = self.model(**dict(zip(self.names, tensors)), return_dict=True)
            return tuple(v for v in out.values() if isinstance(v, torch.Tensor))

    return SentenceEmbedding, PositionalModel


def import_huggingface(path, opset: int = DEFAULT_OPSET) -> ImportedModel:
    torch = require_torch()
    try:
        import transformers
    except ImportError as err:
        raise InputError(f"{path}: importing HuggingFace models needs transformers ({HF_EXTRA})") from err
    path = Path(path)
    with _no_progress_bars(transformers):
        return _import(torch, transformers, path, opset)


@contextlib.contextmanager
def _no_progress_bars(transformers):
    """transformers draws a weight-loading bar on stderr; CI logs stay quiet."""
    hf_logging = transformers.utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _import(torch, transformers, path: Path, opset: int) -> ImportedModel:
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers raises OSError/ValueError/KeyError for unusable dirs
        raise InputError(f"{path}: cannot load as a HuggingFace model ({str(err).splitlines()[0]})") from err
    model.eval()
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in TEXT_INPUTS if n in accepted]
    if "input_ids" not in names:
        raise InputError(f"{path}: only text models taking input_ids are supported "
                         f"({type(model).__name__} takes {', '.join(list(accepted)[:4])})")
    if "token_type_ids" in names and not getattr(config, "type_vocab_size", 0):
        names.remove("token_type_ids")
    feeds = _example_feeds(names, getattr(config, "vocab_size", 1000))
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    sentence, positional = _wrappers(torch)
    pipeline = _sentence_pipeline(path)
    if pipeline is not None:
        module, output_names, framework = sentence(pipeline, names), ["sentence_embedding"], "sentence-transformers"
        output_axes = {"sentence_embedding": {0: "batch"}}
    else:
        module, framework = positional(model, names), "transformers"
        with torch.no_grad():
            out = model(**dict(zip(names, args)), return_dict=True)
        output_names = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        output_axes = {k: _batch_sequence_axes(out[k]) for k in output_names}
    module.eval()  # a fresh wrapper starts in training mode: dropout would make the reference random
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update({k: v for k, v in output_axes.items() if v})
    onnx_model, exporter = export(module, args, names, output_names, axes, opset)
    return ImportedModel(onnx_model, framework, module_reference(module, names), feeds, exporter)


def _sentence_pipeline(path: Path):
    if not (path / "modules.json").is_file():
        return None
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        log.info("%s: sentence-transformers not installed; exporting the bare transformer", path)
        return None
    pipeline = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    pipeline.eval()
    return pipeline


def _example_feeds(names, vocab_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (EXAMPLE_BATCH, EXAMPLE_SEQUENCE)
    feeds = {"input_ids": rng.integers(1, max(vocab_size, 2), size=shape, dtype=np.int64)}
    mask = np.ones(shape, dtype=np.int64)
    mask[1, EXAMPLE_SEQUENCE - 3:] = 0  # a padded row
    feeds["attention_mask"] = mask
    feeds["token_type_ids"] = np.zeros(shape, dtype=np.int64)
    return {n: feeds[n] for n in names}


def _batch_sequence_axes(tensor) -> dict[int, str]:
    axes = {}
    if tensor.ndim >= 1 and tensor.shape[0] == EXAMPLE_BATCH:
        axes[0] = "batch"
    if tensor.ndim >= 2 and tensor.shape[1] == EXAMPLE_SEQUENCE:
        axes[1] = "sequence"
    return axes
