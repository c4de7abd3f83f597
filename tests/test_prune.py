"""prune-channels: coupling analysis, exactness on zeroed channels, rewrite details.

Exactness: the pass prunes a model; the same plan applied as zeros (producer weights,
biases, BN scale/shift of the removed channels) to the original gives a masked model;
both must give the same outputs to 1e-5, and the masked model must differ from the
original (so the test is not vacuous).
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import helper

from graphopt.ir import check_model
from graphopt.passes import PassContext, create_pass
from graphopt.pruning.plan import make_plan, prepare
from graphopt.pruning.rewrite import zero_pruned
from graphopt.verify import run_model
from tests.conftest import make_model, tensor

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript exporter


def export(module, shape, opset=17) -> onnx.ModelProto:
    torch.manual_seed(0)
    module.eval()
    for m in module.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    buf = io.BytesIO()
    torch.onnx.export(module, torch.randn(*shape), buf, input_names=["x"], output_names=["y"],
                      opset_version=opset, dynamo=False, do_constant_folding=False)
    return onnx.load_from_string(buf.getvalue())


def prune_and_mask(model, feeds=None, **options):
    pass_ = create_pass("prune-channels", options)
    ctx = PassContext(calibration_data=feeds)
    result = pass_.run(model, ctx)
    work, _ = prepare(model)
    plan = make_plan(work, pass_.options, feeds)
    zero_pruned(plan.coupling, plan.kept_units)
    return result, plan.coupling.model


def assert_exact(model, shape, feeds=None, **options):
    result = prune_and_mask(model, feeds, **options)
    pruned, masked = result
    assert pruned.changed
    check_model(pruned.model, full=True)
    x = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    ref, got, orig = run_model(masked, x)["y"], run_model(pruned.model, x)["y"], run_model(model, x)["y"]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert np.abs(orig - ref).max() > 1e-3  # the pruned channels did matter
    return pruned


class Res(nn.Module):
    def __init__(self, c, out, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out)
        self.c2, self.b2 = nn.Conv2d(out, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out)
        self.down = None if stride == 1 and c == out else nn.Sequential(
            nn.Conv2d(c, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Res(16, 16, 1), Res(16, 16, 1), Res(16, 32, 2))
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.blocks(self.stem(x)), 1))


def test_resnet_residual_groups_exact():
    model = export(ResNet(), (2, 3, 8, 8))
    result = assert_exact(model, (2, 3, 8, 8), ratio=0.5)
    groups = {r["group"]: r for r in result.stats["groups"]}
    stem = next(r for r in groups.values() if len(r["sources"]) == 3)  # stem + two residual branches
    assert (stem["channels_before"], stem["channels_after"]) == (16, 8)
    assert result.stats["macs_after"] < 0.5 * result.stats["macs_before"]


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(3, 24, 1), nn.BatchNorm2d(24), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24), nn.BatchNorm2d(24), nn.ReLU6())
        self.dw2 = nn.Conv2d(24, 48, 3, 1, 1, groups=24)  # depthwise multiplier 2
        self.project = nn.Sequential(nn.Conv2d(48, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.project(torch.relu(self.dw2(self.dw(self.expand(x)))))
        return self.head(torch.relu(y + self.project(torch.relu(self.dw2(self.dw(self.expand(x)))))))


def test_depthwise_groups_shrink_exact():
    result = assert_exact(export(DepthwiseSeparable(), (1, 3, 6, 6)), (1, 3, 6, 6), ratio=0.5)
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    groups = sorted({a.i for n in convs for a in n.attribute if a.name == "group"})
    assert 12 in groups  # 24 depthwise channels -> 12


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(17, 5, 1)

    def forward(self, x):
        return self.c(torch.cat([torch.relu(self.a(x)), x, torch.relu(self.b(x))], 1))


def test_concat_offsets_exact():
    result = assert_exact(export(ConcatNet(), (1, 3, 5, 5)), (1, 3, 5, 5), ratio=0.5)
    w = next(n for n in result.model.graph.node if n.op_type == "Conv" and "c" in n.name)
    inits = {t.name: t for t in result.model.graph.initializer}
    assert list(inits[w.input[1]].dims)[:2] == [5, 4 + 3 + 3]  # graph-input channels kept


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def test_mlp_hidden_units_exact():
    result = assert_exact(export(MLP(), (4, 12)), (4, 12), ratio=0.25, round_to=8)
    assert [(r["channels_before"], r["channels_after"]) for r in result.stats["groups"]] == [(32, 24), (16, 16)]


class Attention(nn.Module):
    """Pre-norm encoder layer: heads of Q/K/V/O as constants, FFN with GELU."""

    def __init__(self, d=16, heads=4, ff=32, infer_heads=False):
        super().__init__()
        self.h, self.dh = (-1 if infer_heads else heads), d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln, self.ff1, self.ff2 = nn.LayerNorm(d), nn.Linear(d, ff), nn.Linear(ff, d)

    def split(self, t):
        b, n, _ = t.shape
        return t.reshape(b, n, self.h, self.dh).transpose(1, 2)

    def forward(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / self.dh ** 0.5, -1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
        return x + self.ff2(nn.functional.gelu(self.ff1(self.ln(x))))


@pytest.mark.parametrize("infer_heads", [False, True])
def test_attention_heads_and_ffn_exact(infer_heads):
    result = assert_exact(export(Attention(infer_heads=infer_heads), (2, 5, 16)), (2, 5, 16), ratio=0.5)
    rows = {r["unit_channels"]: r for r in result.stats["groups"]}
    assert (rows[4]["channels_before"], rows[4]["channels_after"]) == (16, 8)  # 2 of 4 heads
    assert (rows[1]["channels_before"], rows[1]["channels_after"]) == (32, 16)  # FFN


def _mlp_onnx(zero_units=(), seed=0):
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    w2 = (0.1 * rng.standard_normal((6, 3))).astype(np.float32)
    w1[:, list(zero_units)] = 0
    b1[list(zero_units)] = 0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return make_model(nodes, [tensor("x", ["N", 8])], [tensor("y", ["N", 3])],
                      {"w1": w1, "b1": b1, "w2": w2})


def test_zero_units_chosen_and_outputs_unchanged():
    model = _mlp_onnx(zero_units=(1, 4))
    result = create_pass("prune-channels", {"ratio": 0.34, "criterion": "l1"}).run(model, PassContext())
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert sorted(v.shape for v in inits.values()) == [(4,), (4, 3), (8, 4)]
    x = {"x": np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)}
    np.testing.assert_allclose(run_model(result.model, x)["y"], run_model(model, x)["y"], atol=1e-5)


def test_unsorted_graph_is_sorted_first():
    model = _mlp_onnx()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    result = create_pass("prune-channels", {"ratio": 0.5}).run(model, PassContext())
    assert result.changed
    check_model(result.model, full=True)


def test_split_and_slice_on_channels():
    rng = np.random.default_rng(0)
    inits = {"wa": rng.standard_normal((4, 2, 1, 1)), "wb": rng.standard_normal((6, 2, 1, 1)),
             "wc": rng.standard_normal((3, 4, 1, 1)), "wd": rng.standard_normal((3, 6, 1, 1)),
             "split": np.array([4, 6]), "s0": np.array([4]), "s1": np.array([10]), "ax": np.array([1])}
    inits = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in inits.items()}
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="ca"),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="cb"),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=1, name="cat"),
             helper.make_node("Split", ["ab", "split"], ["p", "q"], axis=1, name="split"),
             helper.make_node("Slice", ["ab", "s0", "s1", "ax"], ["q2"], name="slice"),
             helper.make_node("Conv", ["p", "wc"], ["y1"], name="cc"),
             helper.make_node("Conv", ["q2", "wd"], ["y2"], name="cd"),
             helper.make_node("Add", ["y1", "y2"], ["y3"], name="add"),
             helper.make_node("Conv", ["q", "wd"], ["y4"], name="ce"),
             helper.make_node("Add", ["y3", "y4"], ["y"], name="out")]
    model = make_model(nodes, [tensor("x", [1, 2, 3, 3])], [tensor("y", [1, 3, 3, 3])], inits)
    result = assert_exact(model, (1, 2, 3, 3), ratio=0.5)
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    sizes = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}[split.input[1]]
    assert list(sizes) == [2, 3]


def test_output_group_excluded_and_graph_unchanged():
    rng = np.random.default_rng(0)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="only")
    model = make_model([node], [tensor("x", [1, 2, 3, 3])], [tensor("y", [1, 4, 3, 3])],
                       {"w": rng.standard_normal((4, 2, 1, 1)).astype(np.float32)})
    result = create_pass("prune-channels", {"ratio": 0.5}).run(model, PassContext())
    assert not result.changed and result.model is model
    assert any("reaches graph output y" in n for n in result.notes)


def test_exclude_regex_and_min_channels():
    model = _mlp_onnx()
    result = create_pass("prune-channels", {"ratio": 0.5, "exclude": ["mm.*"]}).run(model, PassContext())
    assert not result.changed and any("excluded by 'mm.*'" in n for n in result.notes)
    result = create_pass("prune-channels", {"ratio": 0.9, "min_channels": 4}).run(model, PassContext())
    assert result.stats["groups"][0]["channels_after"] == 4


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.g = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.b = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.g(torch.relu(self.a(x)))))


def test_grouped_conv_prunes_whole_groups_exact():
    result = assert_exact(export(GroupedNet(), (1, 3, 4, 4)), (1, 3, 4, 4), ratio=0.5)
    g = next(n for n in result.model.graph.node if n.op_type == "Conv" and
             any(a.name == "group" and a.i > 1 for a in n.attribute))
    assert next(a.i for a in g.attribute if a.name == "group") == 2
    rows = sorted((r["unit_channels"], r["channels_before"], r["channels_after"]) for r in result.stats["groups"])
    assert (2, 8, 4) in rows  # input channels pruned two at a time (one conv group)


def test_grouped_conv_across_concat_blocked_with_reason():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"),
             helper.make_node("Concat", ["h", "x"], ["hx"], axis=1, name="cat"),
             helper.make_node("Conv", ["hx", "w2"], ["y"], group=2, name="grouped")]
    model = make_model(nodes, [tensor("x", [1, 1, 3, 3])], [tensor("y", [1, 4, 3, 3])],
                       {"w1": rng.standard_normal((3, 1, 1, 1)).astype(np.float32),
                        "w2": rng.standard_normal((4, 2, 1, 1)).astype(np.float32)})
    result = create_pass("prune-channels", {"ratio": 0.5}).run(model, PassContext())
    assert not result.changed and any("straddles" in n for n in result.notes)


def test_activation_criterion_keeps_active_units():
    model = _mlp_onnx(zero_units=(0, 2, 5))
    feeds = [{"x": np.random.default_rng(3).standard_normal((16, 8)).astype(np.float32)}]
    result = create_pass("prune-channels", {"ratio": 0.5, "criterion": "activation"}).run(
        model, PassContext(calibration_data=feeds))
    np.testing.assert_allclose(run_model(result.model, feeds[0])["y"], run_model(model, feeds[0])["y"], atol=1e-5)


def test_global_scope_and_digits_cnn_runs():
    from models import zoo
    model = onnx.load(str(zoo.digits_cnn()))
    data = zoo.digits_data("test")
    result = create_pass("prune-channels", {"ratio": 0.25, "scope": "global"}).run(model, PassContext())
    assert result.changed
    check_model(result.model, full=True)
    logits = run_model(result.model, {"input": data["input"]})["logits"]
    assert logits.shape == (len(data["label"]), 10)
    assert result.stats["macs_after"] < result.stats["macs_before"]


class UpNet(nn.Module):
    """ConvTranspose source, Resize by sizes, Sigmoid-gated squeeze-excitation, Gemm head."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 8, 2, stride=2)
        self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.conv = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x):
        y = torch.relu(self.up(x))
        y = y * torch.relu(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        y = nn.functional.interpolate(torch.relu(self.conv(y)), size=(8, 8), mode="nearest")
        return self.fc(y.flatten(1))


def test_convtranspose_resize_se_flatten_gemm_exact():
    result = assert_exact(export(UpNet(), (1, 3, 4, 4)), (1, 3, 4, 4), ratio=0.5)
    gemm = next(n for n in result.model.graph.node if n.op_type == "Gemm")
    inits = {t.name: t for t in result.model.graph.initializer}
    assert list(inits[gemm.input[1]].dims) == [5, 3 * 8 * 8]  # channel x spatial rows


def test_deterministic_and_skip_sites():
    model = export(ResNet(), (1, 3, 8, 8))
    a = create_pass("prune-channels", {"ratio": 0.5}).run(model, PassContext())
    b = create_pass("prune-channels", {"ratio": 0.5}).run(model, PassContext())
    assert a.model.SerializeToString(deterministic=True) == b.model.SerializeToString(deterministic=True)
    skipped = create_pass("prune-channels", {"ratio": 0.5}).run(
        model, PassContext(skip_sites=frozenset(a.sites[:1])))
    assert a.sites[0] not in skipped.sites and len(skipped.sites) == len(a.sites) - 1


@pytest.mark.slow
def test_resnet18_half_ratio_drops_macs():
    from models import zoo
    from graphopt.verify import synthesize_inputs
    model = onnx.load(str(zoo.resnet18(112)))
    result = create_pass("prune-channels", {"ratio": 0.5}).run(model, PassContext())
    assert result.stats["macs_after"] <= 0.6 * result.stats["macs_before"]
    check_model(result.model, full=True)
    feeds = synthesize_inputs(result.model, count=1)[0]
    assert run_model(result.model, feeds)["logits"].shape == (feeds["input"].shape[0], 1000)


def test_zoo_encoder_block_heads_exact():
    """Post-norm BERT layer with an attention mask (models/zoo.py): 2 of 4 heads and FFN."""
    from models import zoo
    model = onnx.load(str(zoo.encoder_block()))
    pruned, masked = prune_and_mask(model, ratio=0.5)
    rng = np.random.default_rng(0)
    feeds = {"hidden": rng.standard_normal((2, 16, 128)).astype(np.float32),
             "mask": np.ones((2, 16), np.int64)}
    feeds["mask"][1, 10:] = 0
    name = model.graph.output[0].name
    np.testing.assert_allclose(run_model(pruned.model, feeds)[name], run_model(masked, feeds)[name],
                               atol=1e-5, rtol=1e-5)
    assert sorted(r["unit_channels"] for r in pruned.stats["groups"]) == [1, 32]


class FusedQKV(nn.Module):
    """One Linear makes Q, K and V (split afterwards); a GLU-style chunk in the FFN."""

    def __init__(self, d=16, heads=4):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, 2 * 24), nn.Linear(24, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (t.reshape(b, n, self.h, self.dh).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        a = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, n, d))
        u, g = self.ff1(x).chunk(2, -1)
        return x + self.ff2(u * torch.sigmoid(g))


def test_fused_qkv_and_glu_split_partitions_the_source():
    result = assert_exact(export(FusedQKV(), (2, 5, 16)), (2, 5, 16), ratio=0.5)
    rows = sorted((r["unit_channels"], r["channels_before"], r["channels_after"], len(r["sources"]))
                  for r in result.stats["groups"])
    # GLU halves couple through the product; Q, K, V parts through the two attention MatMuls
    assert rows == [(1, 24, 12, 2), (4, 16, 8, 3)]


@pytest.mark.parametrize("options", [{"scope": "global", "criterion": "l2", "round_to": 4},
                                     {"criterion": "activation", "ratio": 0.4}])
def test_resnet_other_criteria_exact(options):
    model = export(ResNet(), (2, 3, 8, 8))
    feeds = [{"x": np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)}]
    result = assert_exact(model, (2, 3, 8, 8), feeds=feeds, **{"ratio": 0.5, **options})
    if options.get("round_to"):
        assert all(r["channels_after"] % 4 == 0 for r in result.stats["groups"])
