"""Generators for the fuzz suite: random valid graphs, mutated real models, and the CLI oracle.

Every generator takes a `Chooser` (int / pick / flag), so the same code is driven by
hypothesis (`DrawChooser`, which shrinks failures to small graphs) in tests/test_fuzz.py
and by a plain seeded RNG (`RngChooser`) in benchmarks/fuzz_long.py for thousands of cases.

Random graphs: one input ([batch, C, H, W] or [batch, F], batch symbolic or fixed), then
1-10 ops from a small vocabulary with random attributes (Conv k/group/bias, BN, pools,
Gemm transB/bias, MatMul+Add, the LayerNorm and GELU patterns, transpose/reshape round
trips, Add/Concat of two live tensors, Identity/Dropout) and sometimes a second output.
Weights come from a drawn seed; 8% of graphs get one NaN/Inf weight. Mutations of real models: bit flips, truncation, dropped
nodes/initializers, renamed tensors (consistent or one use), shuffled node order, changed
attributes/dims/dtypes/opsets.

`run_case` is the oracle: the CLI (in-process) must exit 0, 1 or 2 without a traceback;
exit 1 prints one error line; only exit 0 writes a model, which must pass onnx.checker
(at the level its input met) and verify numerically against the input.
"""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

PIPELINES = ("cleanup", "cleanup,fuse", "fuse,quantize", "fuse,prune-channels{ratio=0.3},cleanup",
             "lowrank{energy=0.99,min_size=0},sparsity-2to4", "fuse,sparsity-2to4{mode=annotate}",
             "cleanup,fuse,quantize{mode=dynamic}", "quantize{mode=weight-only,weight_type=int4,block_size=16}")
LOSSLESS = {"cleanup", "fuse", "sparsity-2to4{mode=annotate}"}


class RngChooser:
    """Choices from a seeded random.Random (the long run)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, items):
        return items[self.rng.randrange(len(items))]

    def flag(self, p: float = 0.5) -> bool:
        return self.rng.random() < p


class DrawChooser:
    """Choices drawn from hypothesis `st.data()`, so failing cases shrink."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def pick(self, items):
        return self.data.draw(self.st.sampled_from(list(items)))

    def flag(self, p: float = 0.5) -> bool:
        # shrinks toward 0, i.e. False: the simpler graph
        return self.data.draw(self.st.integers(0, 999)) >= round((1 - p) * 1000)


# ------------------------------------------------------------------ random valid graphs
class _Builder:
    def __init__(self, c, seed: int, opset: int):
        self.c, self.rng, self.opset = c, np.random.default_rng(seed), opset
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, array, stem="c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape, scale=0.5) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), "w")

    def node(self, op, inputs, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out


def _op_4d(b: _Builder, t, shape, live):
    """One op on [B, C, H, W]; returns (tensor, shape)."""
    c = b.c
    C, H, W = shape
    op = c.pick(("conv", "conv", "bn", "relu", "sigmoid", "add", "mul", "pool", "transpose", "identity",
                 "concat", "clip", "flatten"))
    if op == "conv":
        k = c.pick((1, 3))
        depthwise = C > 1 and c.flag()
        out_c = C if depthwise else c.int(1, 8)
        group = C if depthwise else 1
        inputs = [t, b.weight((out_c, C // group, k, k))] + ([b.weight((out_c,))] if c.flag() else [])
        return b.node("Conv", inputs, pads=[k // 2] * 4, group=group), (out_c, H, W)
    if op == "bn":
        var = b.const(b.rng.uniform(0.5, 2.0, C).astype(np.float32))
        return b.node("BatchNormalization", [t, b.weight((C,)), b.weight((C,)), b.weight((C,)), var]), shape
    if op in ("relu", "sigmoid"):
        return b.node(op.capitalize(), [t]), shape
    if op == "clip":
        return b.node("Clip", [t, b.const(np.float32(0)), b.const(np.float32(6))]), shape
    if op == "add":
        same = [n for n, s in live if s == shape and n != t]
        other = c.pick(same) if same and c.flag() else b.weight((C, 1, 1))
        return b.node("Add", [t, other]), shape
    if op == "mul":
        return b.node("Mul", [t, b.weight((1, C, 1, 1))]), shape
    if op == "pool":
        if H >= 2 and W >= 2 and c.flag():
            return b.node(c.pick(("MaxPool", "AveragePool")), [t], kernel_shape=[2, 2], strides=[2, 2]), (C, H // 2, W // 2)
        return b.node("MaxPool", [t], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), shape
    if op == "transpose":
        nhwc = b.node("Transpose", [t], perm=[0, 2, 3, 1])
        return b.node("Transpose", [nhwc], perm=[0, 3, 1, 2]), shape
    if op == "concat":
        same = [n for n, s in live if s[1:] == shape[1:]]
        other = c.pick(same)
        return b.node("Concat", [t, other], axis=1), (C + dict(live)[other][0], H, W)
    if op == "flatten":
        return b.node("Flatten", [t], axis=1), (C * H * W,)
    return b.node(c.pick(("Identity", "Dropout")), [t]), shape


def _op_2d(b: _Builder, t, shape, live):
    """One op on [B, F]; returns (tensor, shape)."""
    c = b.c
    (F,) = shape
    op = c.pick(("gemm", "matmul", "relu", "tanh", "softmax", "add", "layernorm", "gelu", "reshape", "identity"))
    if op == "gemm":
        out, trans_b = c.int(1, 32), int(c.flag())
        w = b.weight((out, F) if trans_b else (F, out))
        inputs = [t, w] + ([b.weight((out,))] if c.flag() else [])
        return b.node("Gemm", inputs, transB=trans_b, alpha=c.pick((1.0, 0.5))), (out,)
    if op == "matmul":
        out = c.int(1, 32)
        y = b.node("MatMul", [t, b.weight((F, out))])
        return (b.node("Add", [y, b.weight((out,))]) if c.flag() else y), (out,)
    if op in ("relu", "tanh"):
        return b.node(op.capitalize(), [t]), shape
    if op == "softmax":
        return b.node("Softmax", [t], axis=-1), shape
    if op == "add":
        same = [n for n, s in live if s == shape and n != t]
        return b.node("Add", [t, c.pick(same) if same and c.flag() else b.weight((F,))]), shape
    if op == "layernorm":
        axes = {"axes": [-1]} if b.opset < 18 else {}
        mean_in = [t] if b.opset < 18 else [t, b.const(np.array([-1], np.int64))]
        mean = b.node("ReduceMean", mean_in, keepdims=1, **axes)
        d = b.node("Sub", [t, mean])
        sq = b.node("Pow", [d, b.const(np.float32(2))])
        var = b.node("ReduceMean", [sq] if b.opset < 18 else [sq, b.const(np.array([-1], np.int64))], keepdims=1, **axes)
        std = b.node("Sqrt", [b.node("Add", [var, b.const(np.float32(1e-5))])])
        normed = b.node("Div", [d, std])
        return b.node("Add", [b.node("Mul", [normed, b.weight((F,))]), b.weight((F,))]), shape
    if op == "gelu":
        erf = b.node("Erf", [b.node("Div", [t, b.const(np.float32(np.sqrt(2)))])])
        half = b.node("Mul", [b.node("Add", [erf, b.const(np.float32(1))]), b.const(np.float32(0.5))])
        return b.node("Mul", [t, half]), shape
    if op == "reshape" and F % 2 == 0:
        split = b.node("Reshape", [t, b.const(np.array([0, 2, F // 2], np.int64))])
        return b.node("Reshape", [split, b.const(np.array([0, F], np.int64))]), shape
    return b.node("Identity", [t]), shape


def random_graph(c) -> onnx.ModelProto:
    """A valid, runnable float model from a small op vocabulary with random shapes and attributes."""
    opset = c.pick((13, 17, 21))
    b = _Builder(c, c.int(0, 2**31 - 1), opset)
    batch = c.pick(("N", 1, 2))
    shape = (c.int(1, 6), c.int(3, 8), c.int(3, 8)) if c.flag() else (c.int(1, 24),)
    live = [("x", shape)]
    for _ in range(c.int(1, 10)):
        t, s = live[-1] if c.flag(0.7) else c.pick(live)
        out = (_op_4d if len(s) == 3 else _op_2d)(b, t, s, live)
        live.append(out)
    outputs = [live[-1]]
    if len(live) > 2 and c.flag(0.3):
        extra = c.pick(live[1:-1])
        if extra[0] != outputs[0][0]:
            outputs.append(extra)
    if c.flag(0.08):  # NaN/Inf weights are accepted with a warning, so every pass must survive them
        floats = [t for t in b.inits if t.data_type == T.FLOAT and t.dims]
        if floats:
            target = c.pick(floats)
            values = numpy_helper.to_array(target).copy()
            values.flat[c.int(0, values.size - 1)] = c.pick((np.nan, np.inf, -np.inf))
            target.CopyFrom(numpy_helper.from_array(values, target.name))
    graph = helper.make_graph(
        b.nodes, "fuzz", [helper.make_tensor_value_info("x", T.FLOAT, [batch, *shape])],
        [helper.make_tensor_value_info(n, T.FLOAT, [batch, *s]) for n, s in outputs], b.inits)
    ir_version = c.pick((8, 10, onnx.IR_VERSION))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model, full_check=True)  # a generator bug, not a finding
    return model


# ------------------------------------------------------------------ mutations of real models
MUTATIONS = ("bitflip", "truncate", "drop_node", "drop_initializer", "rename_consistent", "rename_one",
             "shuffle", "attribute", "dims", "dtype", "opset", "duplicate_node")


def mutate(data: bytes, c, count: int | None = None) -> tuple[bytes, list[str]]:
    """Apply 1-3 random mutations to serialized model bytes; returns (bytes, names applied)."""
    applied = []
    for _ in range(count or c.int(1, 3)):
        kind = c.pick(MUTATIONS)
        data = _MUTATORS[kind](data, c)
        applied.append(kind)
    return data, applied


def _proto_mutation(fn):
    """Wrap a ModelProto edit; bytes that no longer parse pass through unchanged (byte mutations did it)."""
    def apply(data: bytes, c) -> bytes:
        model = onnx.ModelProto()
        try:
            model.ParseFromString(data)
        except Exception:
            return data
        try:
            fn(model, c)
        except UnicodeDecodeError:  # an earlier bit flip left a name that is not UTF-8: the edit cannot be made
            return data
        return model.SerializeToString()
    return apply


def _bitflip(data: bytes, c) -> bytes:
    buf = bytearray(data)
    for _ in range(c.int(1, 8)):
        if buf:
            pos = c.int(0, len(buf) - 1)
            buf[pos] ^= 1 << c.int(0, 7)
    return bytes(buf)


def _truncate(data: bytes, c) -> bytes:
    return data[: c.int(0, max(len(data) - 1, 0))]


def _nodes(model):
    return model.graph.node


def _drop_node(model, c):
    if model.graph.node:
        del model.graph.node[c.int(0, len(model.graph.node) - 1)]


def _drop_initializer(model, c):
    if model.graph.initializer:
        del model.graph.initializer[c.int(0, len(model.graph.initializer) - 1)]


def _internal_names(model):
    outputs = {o.name for o in model.graph.output}
    # a bit flip can leave a name that is not UTF-8 (protobuf then hands back bytes): sort by repr
    return sorted({o for n in model.graph.node for o in n.output if o and o not in outputs}, key=repr)


def _rename_consistent(model, c):
    names = _internal_names(model)
    if not names:
        return
    old = c.pick(names)
    new = f"renamed_{c.int(0, 999)}"
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in model.graph.value_info:
        if value.name == old:
            value.name = new


def _rename_one(model, c):
    uses = [(i, j) for i, n in enumerate(model.graph.node) for j, _ in enumerate(n.input)]
    if uses:
        i, j = c.pick(uses)
        model.graph.node[i].input[j] = f"ghost_{c.int(0, 999)}"


def _shuffle(model, c):
    nodes = list(model.graph.node)
    random.Random(c.int(0, 2**31 - 1)).shuffle(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _attribute(model, c):
    attrs = [a for n in model.graph.node for a in n.attribute if a.type in (onnx.AttributeProto.INT,
                                                                          onnx.AttributeProto.INTS,
                                                                          onnx.AttributeProto.FLOAT)]
    if not attrs:
        return
    attr = c.pick(attrs)
    # bounded: a pad of 2**20 makes a valid model that merely runs for minutes (a resource
    # limit question, see benchmarks/results/fuzz.md), not a crash this suite looks for
    value = c.pick((-1, 0, 1, 2, 3, 7, 64))
    if attr.type == onnx.AttributeProto.INT:
        attr.i = value
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float(c.pick((0.0, -1.0, 1e30, float("nan"))))
    elif attr.ints:
        attr.ints[c.int(0, len(attr.ints) - 1)] = value


def _dims(model, c):
    inits = [t for t in model.graph.initializer if t.dims]
    if inits:
        tensor = c.pick(inits)
        tensor.dims[c.int(0, len(tensor.dims) - 1)] = c.pick((0, 1, 3, 1 << 40))


def _dtype(model, c):
    values = list(model.graph.input) + list(model.graph.output)
    if values:
        c.pick(values).type.tensor_type.elem_type = c.pick((T.INT64, T.FLOAT16, T.DOUBLE, T.BOOL, T.STRING, 0, 99))


def _opset(model, c):
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = c.pick((1, 6, 9, 11, 13, 21, 99))


def _duplicate_node(model, c):
    if model.graph.node:
        model.graph.node.append(model.graph.node[c.int(0, len(model.graph.node) - 1)])


_MUTATORS = {"bitflip": _bitflip, "truncate": _truncate, "drop_node": _proto_mutation(_drop_node),
             "drop_initializer": _proto_mutation(_drop_initializer),
             "rename_consistent": _proto_mutation(_rename_consistent), "rename_one": _proto_mutation(_rename_one),
             "shuffle": _proto_mutation(_shuffle), "attribute": _proto_mutation(_attribute),
             "dims": _proto_mutation(_dims), "dtype": _proto_mutation(_dtype), "opset": _proto_mutation(_opset),
             "duplicate_node": _proto_mutation(_duplicate_node)}


# ------------------------------------------------------------------ the oracle
class Finding(AssertionError):
    """A property the CLI broke; `kind` is crash, exit3, input_modified, bad_error_line,
    output_on_failure, invalid_output or unverified_output."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message


def run_case(data: bytes, pipeline: str, workdir: Path, extra: tuple[str, ...] = ()) -> dict:
    """Run `graphopt optimize` in-process on `data`; raise Finding when a property fails."""
    from graphopt.cli import main

    workdir = Path(workdir)
    src, out = workdir / "in.onnx", workdir / "out.onnx"
    for stale in (out, workdir / "out.onnx.data"):
        stale.unlink(missing_ok=True)
    src.write_bytes(data)
    err, sink = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(sink):
        try:
            code = main(["optimize", str(src), "-o", str(out), "--passes", pipeline, "--quiet", *extra])
        except BaseException as exc:  # main must never raise
            raise Finding("crash", f"main raised {type(exc).__name__}: {exc}") from exc
    text = err.getvalue()
    lines = [l for l in text.strip().splitlines() if l.strip()]
    outcome = {"code": code, "message": lines[-1] if lines else "", "pipeline": pipeline}
    if "Traceback" in text or code not in (0, 1, 2, 3):
        raise Finding("crash", f"exit {code} with pipeline {pipeline!r}: {text.strip()[-600:]}")
    if code == 3:
        raise Finding("exit3", f"pipeline {pipeline!r}: {text.strip()[-600:]}")
    if src.read_bytes() != data:
        raise Finding("input_modified", "the input file was modified")
    if code == 1 and not (lines and lines[-1].startswith("graphopt: error: ")):
        raise Finding("bad_error_line", f"exit 1 without a one-line error: {text!r}")
    if code != 0:
        if out.exists():
            raise Finding("output_on_failure", f"exit {code} but an output was written")
        return outcome
    _check_output(src, out, pipeline)
    return outcome


def _check_output(src: Path, out: Path, pipeline: str) -> None:
    import graphopt
    from graphopt.ir import load_model
    from graphopt.ir.validate import check_level

    original, result = load_model(src), load_model(out)
    level = check_level(original)
    try:
        onnx.checker.check_model(result, full_check=level == "full")
    except Exception as exc:
        raise Finding("invalid_output", f"written model fails the {level} checker after {pipeline!r}: {exc}") from exc
    lossless = all(step.split("{")[0] in LOSSLESS or step in LOSSLESS for step in pipeline.split(","))
    try:
        verdict = graphopt.verify(original, result, lossless=lossless, min_cosine=None if lossless else 0.99)
    except Exception as exc:
        raise Finding("unverified_output", f"written model cannot be verified after {pipeline!r}: {type(exc).__name__}: {exc}") from exc
    if not verdict["passed"]:
        raise Finding("unverified_output", f"written model differs after {pipeline!r}: {verdict.get('failures')} "
                      f"{ {k: v.get('rtol_needed', v.get('cosine')) for k, v in verdict['outputs'].items()} }")
