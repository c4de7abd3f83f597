"""Train three tiny classifiers on scikit-learn's digits and export them to ONNX.

The digits set has 1797 grey 8x8 images (pixel values 0..16) and 10 classes. We scale
pixels to [0, 1] (x / 16), split 75/25 with a fixed seed (stratified), and train on CPU
with torch, seeded and deterministic, in well under a minute:

* ``digits_cnn.onnx``   Conv+BN+ReLU x3 with a residual Add, MaxPool, Flatten, Gemm.
  BatchNormalization nodes are kept unfused (TorchScript exporter,
  ``do_constant_folding=False``) so that BN folding in graphopt has real work; BN running
  statistics are non-trivial because they come from training.
* ``digits_mlp.onnx``   Flatten -> Gemm(64) -> Relu -> Gemm(32) -> Relu -> Gemm(10).
* ``digits_transformer.onnx``  the 8 image rows are 8 tokens of dim 8; Linear to d=32,
  plus a learned position embedding, 2 pre-norm encoder layers whose attention is
  written out as MatMul / Softmax (scores = Q K^T / sqrt(d_head), 4 heads of 8),
  LayerNorm, GELU FFN of width 64, mean over tokens, Linear to 10.

Every model: opset 17, input ``input`` float32 [N,1,8,8] (N dynamic), output ``logits``
[N,10], test accuracy in metadata_props["test_accuracy"]. Also writes
``digits_calib.npz`` (64 training samples, key ``input``) and ``digits_test.npz``
(every test sample: ``input``, ``label``).

Run: ``python -m models.build_digits [--out DIR]`` (default: this directory).
"""
from __future__ import annotations

import argparse
import logging
import math
import random
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SEED = 0
OPSET = 17
HERE = Path(__file__).resolve().parent


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test); x float32 [n,1,8,8] in [0,1], y int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return xtr, ytr, xte, yte


def _torch_modules():
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        """conv1(1->16) -> conv2(16->16) -> conv3(16->16) + skip from conv1 -> pool -> fc."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.conv3 = nn.Conv2d(16, 16, 3, padding=1, bias=True)
            self.bn3 = nn.BatchNorm2d(16)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(16 * 4 * 4, 10)

        def forward(self, x):
            a = torch.relu(self.bn1(self.conv1(x)))
            b = torch.relu(self.bn2(self.conv2(a)))
            c = torch.relu(self.bn3(self.conv3(b)) + a)  # residual Add
            p = self.pool(c)
            return self.fc(torch.flatten(p, 1))

    class DigitsMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.fc2 = nn.Linear(64, 32)
            self.fc3 = nn.Linear(32, 10)

        def forward(self, x):
            h = torch.flatten(x, 1)
            h = torch.relu(self.fc1(h))
            h = torch.relu(self.fc2(h))
            return self.fc3(h)

    class Attention(nn.Module):
        """Multi-head self-attention with explicit MatMul/Softmax (no fused MHA op)."""

        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.h, self.dh = heads, d // heads
            self.q = nn.Linear(d, d)
            self.k = nn.Linear(d, d)
            self.v = nn.Linear(d, d)
            self.o = nn.Linear(d, d)

        def forward(self, x):  # x [N, T, d]
            n, t, d = x.shape
            def split(z):
                return z.reshape(n, t, self.h, self.dh).transpose(1, 2)  # [N,h,T,dh]
            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.dh))
            a = torch.softmax(s, dim=-1)
            y = torch.matmul(a, v).transpose(1, 2).reshape(n, t, d)
            return self.o(y)

    class EncoderLayer(nn.Module):
        def __init__(self, d: int, heads: int, ff: int) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = Attention(d, heads)
            self.ln2 = nn.LayerNorm(d)
            self.ff1 = nn.Linear(d, ff)
            self.ff2 = nn.Linear(ff, d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.ln2(x))))

    class DigitsTransformer(nn.Module):
        def __init__(self, d: int = 32, heads: int = 4, ff: int = 64, layers: int = 2) -> None:
            super().__init__()
            self.embed = nn.Linear(8, d)
            self.pos = nn.Parameter(torch.randn(1, 8, d) * 0.02)
            self.layers = nn.ModuleList(EncoderLayer(d, heads, ff) for _ in range(layers))
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, 10)

        def forward(self, x):  # x [N,1,8,8] -> rows as tokens [N,8,8]
            h = self.embed(torch.flatten(x, 1, 2)) + self.pos
            for layer in self.layers:
                h = layer(h)
            return self.head(self.ln(h).mean(dim=1))

    return {"cnn": DigitsCNN, "mlp": DigitsMLP, "transformer": DigitsTransformer}


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def train(model, xtr, ytr, epochs: int, lr: float, seed: int) -> None:
    """Adam + cosine schedule, minibatch 64, fixed shuffling generator."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def accuracy_torch(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def accuracy_onnx(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return float((logits.argmax(1) == y).mean())


def export(model, path: Path, accuracy: float, doc: str) -> None:
    """TorchScript export, opset 17, BN kept (no constant folding), metadata recorded."""
    import onnx
    import torch

    dummy = torch.zeros(2, 1, 8, 8)
    torch.onnx.export(
        model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL,
    )
    m = onnx.load(str(path))
    m.producer_name = "graphopt.models.build_digits"
    m.doc_string = doc
    del m.metadata_props[:]
    for k, v in {"test_accuracy": f"{accuracy:.6f}", "dataset": "sklearn.datasets.load_digits",
                 "split": f"test_size=0.25 stratified random_state={SEED}", "preprocess": "x/16"}.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


SPECS = {
    # name: (epochs, lr, doc)
    "cnn": (30, 1e-2, "digits CNN: Conv+BN+Relu x3, residual Add, MaxPool, Gemm"),
    "mlp": (60, 1e-2, "digits MLP: Gemm 64 -> Relu -> Gemm 32 -> Relu -> Gemm 10"),
    "transformer": (60, 3e-3, "digits transformer: 8 row tokens, 2 encoder layers d32 h4 ff64, mean-pool"),
}


def build(out: Path = HERE) -> dict[str, float]:
    """Train, export and check all three models; write the npz files. Returns onnx accuracies."""
    import torch

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_split()
    rng = np.random.default_rng(SEED)
    calib = xtr[np.sort(rng.choice(len(xtr), 64, replace=False))]
    np.savez_compressed(out / "digits_calib.npz", input=calib)
    np.savez_compressed(out / "digits_test.npz", input=xte, label=yte)
    results = {}
    for i, (name, cls) in enumerate(_torch_modules().items()):
        epochs, lr, doc = SPECS[name]
        _seed_everything(SEED + i)
        model = cls()
        train(model, xtr, ytr, epochs, lr, SEED + i)
        acc = accuracy_torch(model, xte, yte)
        path = out / f"digits_{name}.onnx"
        export(model, path, acc, doc)
        acc_onnx = accuracy_onnx(path, xte, yte)
        if abs(acc_onnx - acc) > 1.5 / len(yte):
            raise RuntimeError(f"{name}: onnx accuracy {acc_onnx} != torch {acc}")
        log.info("%s: test accuracy %.4f (onnx %.4f), %d bytes", name, acc, acc_onnx, path.stat().st_size)
        results[name] = acc_onnx
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, acc in build(args.out).items():
        print(f"{name}: {acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
