"""ResNet-18, MobileNetV2 and a BERT-like encoder block in plain torch, with ONNX exporters.

torchvision is not available, so the architectures are written out here following the
papers (He et al. 2015, basic blocks [2,2,2,2]; Sandler et al. 2018, inverted residuals
with expansion t, ReLU6, width 1.0). Weights are a seeded random init; BatchNorm running
statistics are made non-trivial (mean ~ N(0, 0.1), var ~ U(0.5, 2), gamma ~ U(0.5, 1.5),
beta ~ N(0, 0.1)) so that folding BN into the preceding Conv changes the weights.

Exports: TorchScript exporter, opset 17, eval mode, ``do_constant_folding=False`` so
BatchNormalization nodes stay in the graph. Input ``input`` float32 [N,3,H,W] with N
dynamic; output ``logits`` [N,1000].
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 17


# ---------------------------------------------------------------- ResNet-18
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------- MobileNetV2
class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        layers = [] if t == 1 else [ConvBNReLU6(cin, hidden, 1)]
        layers += [ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s) from Table 2 of the paper
    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        feats, cin = [ConvBNReLU6(3, 32, 3, 2)], 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(ConvBNReLU6(cin, 1280, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------- BERT-like block
class EncoderBlock(nn.Module):
    """Post-norm BERT layer: x = LN(x + MHA(x)); x = LN(x + W2 gelu(W1 x)); MatMul/Softmax attention."""

    def __init__(self, d: int = 128, heads: int = 4, ff: int = 512) -> None:
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv = nn.ModuleList(nn.Linear(d, d) for _ in range(3))
        self.o = nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x, mask):  # x [B,T,d], mask [B,T] (1 keep, 0 pad)
        b, t, d = x.shape
        q, k, v = (m(x).reshape(b, t, self.h, self.dh).transpose(1, 2) for m in self.qkv)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh)
        s = s + (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0
        a = torch.matmul(torch.softmax(s, -1), v).transpose(1, 2).reshape(b, t, d)
        x = self.ln1(x + self.o(a))
        return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


# ---------------------------------------------------------------- init + export
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Seeded He-style init plus non-trivial BN statistics; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def _export(model: nn.Module, path: str | Path, image_size: int, doc: str) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model, (torch.zeros(1, 3, image_size, image_size),), str(tmp), dynamo=False, opset_version=OPSET,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL,
    )
    m = onnx.load(str(tmp))
    m.producer_name, m.doc_string = "graphopt.models.torch_nets", doc
    m.metadata_props.add(key="weights", value="random seeded init (not trained)")
    onnx.save(m, str(tmp))
    tmp.replace(path)  # atomic: a half-written file never appears under the final name
    log.info("exported %s (%d bytes)", path, path.stat().st_size)
    return path


def export_resnet18(path: str | Path, image_size: int = 224, seed: int = 0) -> Path:
    return _export(randomize(ResNet18(), seed), path, image_size, "ResNet-18, random init, BN unfused")


def export_mobilenetv2(path: str | Path, image_size: int = 224, seed: int = 0) -> Path:
    return _export(randomize(MobileNetV2(), seed), path, image_size, "MobileNetV2 1.0, random init, BN unfused")


def export_encoder_block(path: str | Path, seq: int = 16, d: int = 128, seed: int = 0) -> Path:
    """BERT-like block; inputs ``hidden`` [B,T,d] float32 and ``mask`` [B,T] int64, B and T dynamic."""
    import onnx

    torch.manual_seed(seed)
    model = EncoderBlock(d).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model, (torch.zeros(1, seq, d), torch.ones(1, seq, dtype=torch.int64)), str(tmp), dynamo=False,
        opset_version=OPSET, input_names=["hidden", "mask"], output_names=["output"],
        dynamic_axes={"hidden": {0: "B", 1: "T"}, "mask": {0: "B", 1: "T"}, "output": {0: "B", 1: "T"}},
        do_constant_folding=False,
    )
    onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    tmp.replace(path)
    return path
