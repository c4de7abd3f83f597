"""Bad and hostile input: one test per class, driven through the CLI in-process.

Every refusal must be exit 1 with exactly one line on stderr naming the problem, no output
written, and the input file byte-identical (and not touched) afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from graphopt.cli import main
from graphopt.ir import io as ir_io
from graphopt.ir import load_model, save_model


# ---------------------------------------------------------------- helpers
def _tiny(opset=17, ir_version=8, weight=None) -> onnx.ModelProto:
    """x[1,4] @ w[4,4] -> Relu -> z."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32) if weight is None else weight, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", T.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z", T.FLOAT, [1, 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def _write(path, model_or_bytes):
    data = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
    path.write_bytes(data)
    return path


def _refused(tmp_path, capsys, src, message, *extra, passes="cleanup"):
    """Run optimize on `src`; assert exit 1, one stderr line containing `message`, nothing written."""
    out = tmp_path / "out.onnx"
    before = src.read_bytes() if src.is_file() else None
    stamp = src.stat().st_mtime_ns if src.is_file() else None
    code = main(["optimize", str(src), "-o", str(out), "--passes", passes, "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert len(err) == 1 and err[0].startswith("graphopt: error: "), err
    assert message in err[0], err[0]
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")], "temp file left behind"
    if before is not None:
        assert src.read_bytes() == before and src.stat().st_mtime_ns == stamp
    return err[0]


def _mutated(mutate, **kwargs) -> onnx.ModelProto:
    model = _tiny(**kwargs)
    mutate(model)
    return model


def _external(model, tensor_name, **entries):
    tensor = next(t for t in model.graph.initializer if t.name == tensor_name)
    tensor.ClearField("raw_data")
    tensor.data_location = T.EXTERNAL
    del tensor.external_data[:]
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return model


# ---------------------------------------------------------------- files that are not models
def test_missing_file(tmp_path, capsys):
    _refused(tmp_path, capsys, tmp_path / "absent.onnx", "no such file")


def test_directory_instead_of_file(tmp_path, capsys):
    (tmp_path / "dir.onnx").mkdir()
    _refused(tmp_path, capsys, tmp_path / "dir.onnx", "not a regular file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, capsys):
    src = _write(tmp_path / "locked.onnx", _tiny())
    src.chmod(0)
    try:
        out = tmp_path / "out.onnx"
        assert main(["optimize", str(src), "-o", str(out), "--passes", "cleanup"]) == 1
        assert "cannot read" in capsys.readouterr().err
        assert not out.exists()
    finally:
        src.chmod(0o644)


@pytest.mark.parametrize("data", [b"", b"hello, world\n" * 20, b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
                                  b"\x08\x07" + b"\xff" * 50, bytes(100)])
def test_non_onnx_bytes(tmp_path, capsys, data):
    src = _write(tmp_path / "junk.onnx", data)
    _refused(tmp_path, capsys, src, "empty" if not data else "not an ONNX model")


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.33, 0.5, 0.9, 0.999])
def test_truncated_protobuf(tmp_path, capsys, digits_cnn_path, fraction):
    data = digits_cnn_path.read_bytes()
    src = _write(tmp_path / "cut.onnx", data[: int(len(data) * fraction)])
    _refused(tmp_path, capsys, src, "")


@pytest.mark.parametrize("where", ["domain", "name"])
def test_non_utf8_strings_refused(tmp_path, capsys, where):
    """proto2 does not validate UTF-8: a flipped bit in a name yields bytes, which crashed validation (exit 3)."""
    model = _tiny()
    setattr(model.graph.node[1], where, "zzzz")
    data = model.SerializeToString().replace(b"zzzz", b"\xff\xfe\x80z")
    _refused(tmp_path, capsys, _write(tmp_path / "utf.onnx", data), f"NodeProto.{where} is not UTF-8 text")


def test_too_deeply_nested_protobuf(tmp_path, capsys):
    """Subgraphs nested beyond protobuf's recursion limit are refused at parse time, not by a crash."""
    node = onnx.NodeProto()
    node.op_type = "If"
    inner_bytes = b""
    for _ in range(120):  # GraphProto.node -> NodeProto.attribute -> AttributeProto.g -> GraphProto ...
        attr = onnx.AttributeProto(name="then_branch", type=onnx.AttributeProto.GRAPH)
        attr_bytes = attr.SerializeToString() + b"\x32" + _varint(len(inner_bytes)) + inner_bytes  # field 6 = g
        node_bytes = b"\x2a" + _varint(len(attr_bytes)) + attr_bytes  # NodeProto field 5 = attribute
        inner_bytes = b"\x0a" + _varint(len(node_bytes)) + node_bytes  # GraphProto field 1 = node
    model = _tiny()
    data = model.SerializeToString() + b"\x3a" + _varint(len(inner_bytes)) + inner_bytes  # ModelProto.graph (merge)
    _refused(tmp_path, capsys, _write(tmp_path / "deep.onnx", data), "not an ONNX model")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# ---------------------------------------------------------------- versions
@pytest.mark.parametrize("ir_version,message", [(99, "IR version 99 is outside"), (2, "IR version 2 is outside")])
def test_ir_version_outside_range(tmp_path, capsys, ir_version, message):
    src = _write(tmp_path / "ir.onnx", _tiny(ir_version=ir_version))
    _refused(tmp_path, capsys, src, message)


def test_newest_ir_and_opset_accepted(tmp_path, capsys):
    """A model written by the installed onnx with its defaults (IR onnx.IR_VERSION) is accepted."""
    src = _write(tmp_path / "new.onnx", _tiny(opset=onnx.defs.onnx_opset_version(), ir_version=onnx.IR_VERSION))
    assert main(["optimize", str(src), "-o", str(tmp_path / "out.onnx"), "--passes", "cleanup,fuse", "--quiet"]) == 0, \
        capsys.readouterr().err


@pytest.mark.parametrize("opset,message", [(99, "default opset 99 outside"), (3, "default opset 3 outside")])
def test_opset_outside_range(tmp_path, capsys, opset, message):
    src = _write(tmp_path / "opset.onnx", _tiny(opset=opset))
    _refused(tmp_path, capsys, src, message)


def test_no_default_opset(tmp_path, capsys):
    model = _tiny()
    model.opset_import[0].domain = "com.acme"
    _refused(tmp_path, capsys, _write(tmp_path / "noopset.onnx", model), "")


# ---------------------------------------------------------------- graph structure
def test_cycle(tmp_path, capsys):
    def cycle(m):
        m.graph.node[0].input[0] = "z"  # MatMul reads Relu's output, Relu reads MatMul's
    _refused(tmp_path, capsys, _write(tmp_path / "cycle.onnx", _mutated(cycle)), "graph has a cycle")


def test_cycle_inside_subgraph(tmp_path, capsys):
    body = helper.make_graph(
        [helper.make_node("Neg", ["b"], ["a"]), helper.make_node("Abs", ["a"], ["b"])], "branch", [],
        [helper.make_tensor_value_info("b", T.FLOAT, [1])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["c"])], "other", [],
                              [helper.make_tensor_value_info("c", T.FLOAT, [1])])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=other)], "g",
                              [helper.make_tensor_value_info("cond", T.BOOL, []),
                               helper.make_tensor_value_info("x", T.FLOAT, [1])],
                              [helper.make_tensor_value_info("z", T.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    _refused(tmp_path, capsys, _write(tmp_path / "subcycle.onnx", model), "subgraph 'branch' has a cycle")


def test_dangling_name(tmp_path, capsys):
    def dangle(m):
        m.graph.node[1].input[0] = "nowhere"
    _refused(tmp_path, capsys, _write(tmp_path / "d.onnx", _mutated(dangle)),
             "node 'relu' reads 'nowhere', which nothing defines")


def test_output_never_produced(tmp_path, capsys):
    def orphan(m):
        m.graph.output[0].name = "ghost"
    _refused(tmp_path, capsys, _write(tmp_path / "o.onnx", _mutated(orphan)), "graph output 'ghost' is never produced")


def test_duplicate_tensor_names(tmp_path, capsys):
    def dup(m):
        m.graph.node.insert(1, helper.make_node("Abs", ["x"], ["y"], name="abs"))  # MatMul already makes y
    _refused(tmp_path, capsys, _write(tmp_path / "dup.onnx", _mutated(dup)), "tensor 'y' is produced twice")


def test_duplicate_initializers(tmp_path, capsys):
    def dup(m):
        m.graph.initializer.append(m.graph.initializer[0])
    _refused(tmp_path, capsys, _write(tmp_path / "dupinit.onnx", _mutated(dup)), "name 'w' is defined twice")


def test_missing_initializer(tmp_path, capsys):
    def drop(m):
        del m.graph.initializer[:]
    _refused(tmp_path, capsys, _write(tmp_path / "noinit.onnx", _mutated(drop)),
             "node 'mm' reads 'w', which nothing defines")


# ---------------------------------------------------------------- domains
def test_domain_used_but_not_imported(tmp_path, capsys):
    def foreign(m):
        m.graph.node[1].domain = "com.acme"
    _refused(tmp_path, capsys, _write(tmp_path / "dom.onnx", _mutated(foreign)),
             "operators of domain 'com.acme' are used but the model does not import it")


def test_unknown_custom_domain_cannot_be_verified(tmp_path, capsys):
    def foreign(m):
        m.graph.node[1].domain = "com.acme"
        m.opset_import.append(helper.make_opsetid("com.acme", 1))
    _refused(tmp_path, capsys, _write(tmp_path / "acme.onnx", _mutated(foreign)), "onnxruntime cannot load the input")


def test_runtime_custom_domain_passes_through_untouched(tmp_path, capsys):
    """A contrib op onnxruntime knows (com.microsoft.Gelu) is kept as-is around rewritten standard ops."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Gelu", ["hb"], ["g"], name="gelu", domain="com.microsoft"),
             helper.make_node("Identity", ["g"], ["gi"], name="ident"),
             helper.make_node("MatMul", ["gi", "w2"], ["z"], name="mm2")]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 4)))]
    graph = helper.make_graph(nodes, "contrib", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("z", T.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    src, out, report = _write(tmp_path / "ms.onnx", model), tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["optimize", str(src), "-o", str(out), "--passes", "cleanup,fuse", "--report", str(report),
                 "--quiet"]) == 0, capsys.readouterr().err
    result = onnx.load(str(out))
    gelu = [n for n in result.graph.node if n.domain == "com.microsoft"]
    assert len(gelu) == 1 and gelu[0].op_type == "Gelu" and gelu[0].attribute == model.graph.node[2].attribute
    assert "Identity" not in {n.op_type for n in result.graph.node}  # the standard part was optimized
    data = json.loads(report.read_text())
    assert data["verification"]["passed"]
    assert any("custom domain 'com.microsoft'" in w for w in data["warnings"])


# ---------------------------------------------------------------- tensors
def test_declared_size_would_exhaust_memory(tmp_path, capsys):
    def huge(m):
        m.graph.initializer[0].dims[:] = [1 << 20, 1 << 20]
    _refused(tmp_path, capsys, _write(tmp_path / "huge.onnx", _mutated(huge)), "would need 4096.0 GiB")


def test_negative_dimension(tmp_path, capsys):
    def neg(m):
        m.graph.initializer[0].dims[:] = [-4, -4]
    _refused(tmp_path, capsys, _write(tmp_path / "neg.onnx", _mutated(neg)), "negative dimension")


def test_unknown_tensor_type(tmp_path, capsys):
    def odd(m):
        m.graph.initializer[0].data_type = 999
    _refused(tmp_path, capsys, _write(tmp_path / "t.onnx", _mutated(odd)), "unknown data type 999")


@pytest.mark.parametrize("dims,message", [([4, 5], "holds 20 values but the data has 16"),
                                          ([2, 4], "holds 8 values but the data has 16")])
def test_raw_data_size_mismatch(tmp_path, capsys, dims, message):
    def resize(m):
        m.graph.initializer[0].dims[:] = dims
    _refused(tmp_path, capsys, _write(tmp_path / "raw.onnx", _mutated(resize)), message)


def test_packed_int4_raw_data_is_sized_in_nibbles():
    """INT4 raw_data stores two values per byte: a correct tensor is accepted, a short one refused."""
    from graphopt.errors import InputError
    from graphopt.ir.validate import validate_model

    tensor = helper.make_tensor("q", T.INT4, [5], vals=b"\x21\x43\x05", raw=True)
    model = _tiny()
    model.graph.initializer.append(tensor)
    assert validate_model(model) == []
    tensor.raw_data = b"\x21"
    model.graph.initializer[-1].CopyFrom(tensor)
    with pytest.raises(InputError, match="holds 5 values but the data has 2"):
        validate_model(model)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_weights_are_warned_not_refused(tmp_path, capsys, bad):
    weight = np.eye(4, dtype=np.float32)
    weight[2, 3] = bad
    src = _write(tmp_path / "nan.onnx", _tiny(weight=weight))
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["optimize", str(src), "-o", str(out), "--passes", "cleanup,fuse", "--report", str(report),
                 "--quiet"]) == 0, capsys.readouterr().err
    warnings = json.loads(report.read_text())["warnings"]
    assert warnings == ["tensor 'w': 1 NaN/Inf value(s)"]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


# ---------------------------------------------------------------- .npz data
@pytest.fixture
def tiny_src(tmp_path):
    return _write(tmp_path / "tiny.onnx", _tiny())


@pytest.mark.parametrize("arrays,message", [
    ({"wrong": np.zeros((3, 4), np.float32)}, "no array for model input(s) x"),
    ({"x": np.zeros((3, 4), np.complex64)}, "'x' has dtype complex64, model expects float32"),
    ({"x": np.full((3, 4), "abc")}, "'x' has dtype <U3, model expects float32"),
    ({"x": np.zeros((3, 5), np.float32)}, "'x' has shape [3, 5], model expects dim 1 = 4"),
    ({"x": np.zeros((3, 1, 4), np.float32)}, "'x' has rank 3, model expects 2"),
    ({"x": np.zeros((0, 4), np.float32)}, "non-empty sample axis 0"),
])
@pytest.mark.parametrize("flag", ["--inputs", "--calibration-data"])
def test_npz_not_matching_model(tmp_path, capsys, tiny_src, arrays, message, flag):
    data = tmp_path / "data.npz"
    np.savez(data, **arrays)
    _refused(tmp_path, capsys, tiny_src, message, flag, str(data))


def test_npz_not_a_zip_or_pickled(tmp_path, capsys, tiny_src):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really")
    _refused(tmp_path, capsys, tiny_src, "not a zip archive", "--inputs", str(junk))
    npy = tmp_path / "plain.npy"
    np.save(npy, np.zeros((2, 4), np.float32))
    _refused(tmp_path, capsys, tiny_src, "not a zip archive", "--inputs", str(npy))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    _refused(tmp_path, capsys, tiny_src, "not a readable .npz", "--inputs", str(pickled))


def _npz_with_header(path, shape, payload=b""):
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + payload)
    return path


def test_npz_declaring_terabytes_refused_before_reading(tmp_path, capsys, tiny_src):
    """A 100-byte .npz whose header declares 4 TiB must not be allocated (was MemoryError, exit 3)."""
    bomb = _npz_with_header(tmp_path / "bomb.npz", (1 << 40, 4))
    _refused(tmp_path, capsys, tiny_src, "arrays declare 16384.0 GiB, over the 8 GiB limit", "--inputs", str(bomb))
    short = _npz_with_header(tmp_path / "short.npz", (1 << 10, 4), bytes(64))
    _refused(tmp_path, capsys, tiny_src, "not a readable .npz file", "--calibration-data", str(short))


@pytest.mark.parametrize("command", ["inspect", "cost", "diff", "verify", "explain"])
@pytest.mark.parametrize("defect,message", [("huge", "would need 4096.0 GiB"), ("mismatch", "holds 20 values but the data has 16"),
                                            ("junk", "not an ONNX model")])
def test_every_command_refuses_corrupt_tensors(tmp_path, capsys, tiny_src, command, defect, message):
    """Not only optimize: read-only commands refuse corrupt tensors too (diff used to crash reshaping them)."""
    model = _tiny()
    if defect == "huge":
        model.graph.initializer[0].dims[:] = [1 << 20, 1 << 20]
    elif defect == "mismatch":
        model.graph.initializer[0].dims[:] = [4, 5]
    bad = _write(tmp_path / "bad.onnx", b"\x12\x34junk" * 9 if defect == "junk" else model.SerializeToString())
    args = [command, str(bad)] if command in ("inspect", "cost") else [command, str(tiny_src), str(bad)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# ---------------------------------------------------------------- external data
def _with_external(tmp_path, name="weights.bin", **entries):
    (tmp_path / "weights.bin").write_bytes(np.eye(4, dtype=np.float32).tobytes())
    return _write(tmp_path / "ext.onnx", _external(_tiny(), "w", location=name, **entries))


def test_output_over_inputs_external_data_refused(tmp_path, capsys):
    """-o naming the input's weights file would destroy the input, even with --force."""
    src = _with_external(tmp_path, offset=0, length=64)
    weights = (tmp_path / "weights.bin").read_bytes()
    assert main(["optimize", str(src), "-o", str(tmp_path / "weights.bin"), "--passes", "cleanup", "--force"]) == 1
    assert "output would overwrite the input" in capsys.readouterr().err
    assert (tmp_path / "weights.bin").read_bytes() == weights


def test_external_data_inside_directory_loads(tmp_path, capsys):
    src = _with_external(tmp_path, offset=0, length=64)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--passes", "cleanup", "--quiet"]) == 0
    assert numpy_helper.to_array(load_model(out).graph.initializer[0]).tolist() == np.eye(4).tolist()


@pytest.mark.parametrize("location", ["../weights.bin", "sub/../../weights.bin", "/etc/hostname", "/dev/zero"])
def test_external_data_escaping_directory_refused(tmp_path, capsys, location):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "weights.bin").write_bytes(np.eye(4, dtype=np.float32).tobytes())
    src = _write(model_dir / "ext.onnx", _external(_tiny(), "w", location=location))
    _refused(tmp_path, capsys, src, "points outside the model's directory; refused")


def test_external_data_symlink_out_refused(tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(64))
    (model_dir / "link.bin").symlink_to(secret)
    src = _write(model_dir / "ext.onnx", _external(_tiny(), "w", location="link.bin"))
    _refused(tmp_path, capsys, src, "'link.bin' points outside the model's directory; refused")


@pytest.mark.parametrize("entries,message", [
    ({"offset": 1000}, "offset 1000 is past the end of 'weights.bin' (64 bytes)"),
    ({"offset": 8, "length": 64}, "offset 8 + length 64 exceeds 'weights.bin' (64 bytes)"),
    ({"offset": 0, "length": 99999}, "length 99999 exceeds 'weights.bin'"),
    ({"offset": -5}, "external data offset -5 is negative"),
    ({"length": "12abc"}, "external data length '12abc' is not an integer"),
    ({"offset": 0, "length": 8}, "external data length 8 bytes does not match shape [4, 4] (64 bytes)"),
    ({"offset": 32}, "external data length 32 bytes does not match shape [4, 4] (64 bytes)"),
])
def test_external_data_bad_offset_or_length(tmp_path, capsys, entries, message):
    _refused(tmp_path, capsys, _with_external(tmp_path, **entries), message)


def test_external_data_missing_file_or_location(tmp_path, capsys):
    _refused(tmp_path, capsys, _with_external(tmp_path, name="absent.bin"), "external data file 'absent.bin' not found")
    src = _write(tmp_path / "noloc.onnx", _external(_tiny(), "w", offset=0))
    _refused(tmp_path, capsys, src, "external data has no usable location")


def test_external_data_total_limit(tmp_path, capsys, monkeypatch):
    """Many tensors each under the per-tensor limit, all reading the same file, add up: refused."""
    monkeypatch.setattr(ir_io, "MAX_EXTERNAL_BYTES", 100)
    model = _external(_tiny(), "w", location="weights.bin", offset=0, length=64)
    second = onnx.TensorProto()
    second.CopyFrom(model.graph.initializer[0])
    second.name = "w2"
    model.graph.initializer.append(second)
    (tmp_path / "weights.bin").write_bytes(bytes(64))
    _refused(tmp_path, capsys, _write(tmp_path / "twice.onnx", model), "external data totals 0.0 GiB, over the 0 GiB limit")


def test_external_data_huge_declaration_refused_before_reading(tmp_path, capsys):
    model = _external(_tiny(), "w", location="weights.bin")
    model.graph.initializer[0].dims[:] = [1 << 20, 1 << 20]
    (tmp_path / "weights.bin").write_bytes(bytes(64))
    _refused(tmp_path, capsys, _write(tmp_path / "big.onnx", model), "would need 4096.0 GiB")


# ---------------------------------------------------------------- writing outputs
def test_large_model_saved_with_external_data_beside_output(tmp_path, monkeypatch, digits_cnn_path):
    """A model over the protobuf limit (patched down to 4 kB) is written as out.onnx + out.onnx.data."""
    monkeypatch.setattr(ir_io, "SAVE_EXTERNAL_ABOVE", 4096)
    model = onnx.load(str(digits_cnn_path))
    out = tmp_path / "sub" / "out.onnx"
    out.parent.mkdir()
    save_model(model, out)
    monkeypatch.undo()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.onnx", "out.onnx.data"]
    assert out.stat().st_size < model.ByteSize() // 4
    locations = {e.value for t in onnx.load(str(out), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert locations == {"out.onnx.data"}
    again = load_model(out)
    for a, b in zip(model.graph.initializer, again.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_large_model_external_data_through_cli(tmp_path, monkeypatch, capsys, digits_cnn_path):
    src = tmp_path / "in.onnx"
    shutil.copy(digits_cnn_path, src)
    out = tmp_path / "out.onnx"
    monkeypatch.setattr(ir_io, "SAVE_EXTERNAL_ABOVE", 4096)
    assert main(["optimize", str(src), "-o", str(out), "--passes", "cleanup,fuse", "--quiet"]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "out.onnx.data").is_file()
    # an existing data file is not clobbered without --force
    (tmp_path / "other.onnx.data").write_bytes(b"keep")
    assert main(["optimize", str(src), "-o", str(tmp_path / "other.onnx"), "--passes", "cleanup", "--quiet"]) == 1
    assert (tmp_path / "other.onnx.data").read_bytes() == b"keep" and not (tmp_path / "other.onnx").exists()
    monkeypatch.undo()
    onnx.checker.check_model(str(out), full_check=True)


class _Boom(OSError):
    pass


def test_atomic_write_failure_at_rename_leaves_nothing(tmp_path, monkeypatch, capsys, digits_cnn_path):
    src = tmp_path / "in.onnx"
    shutil.copy(digits_cnn_path, src)
    out = tmp_path / "out.onnx"

    def fail(*args):
        raise _Boom(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ir_io.os, "replace", fail)
    assert main(["optimize", str(src), "-o", str(out), "--passes", "cleanup", "--quiet"]) == 1
    assert "cannot write (No space left on device)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_atomic_write_failure_mid_write_keeps_old_output(tmp_path, monkeypatch, capsys, digits_cnn_path):
    """The write dies after half the bytes: the previous output (overwritten with --force) is intact."""
    src = tmp_path / "in.onnx"
    shutil.copy(digits_cnn_path, src)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise _Boom(errno.EIO, "Input/output error")

    monkeypatch.setattr(ir_io.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    assert main(["optimize", str(src), "-o", str(out), "--passes", "cleanup", "--force", "--quiet"]) == 1
    assert "cannot write (Input/output error)" in capsys.readouterr().err
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]


def test_output_mode_follows_umask(tmp_path):
    out = save_model(_tiny(), tmp_path / "m.onnx")
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_force_overwrites_existing_output(tmp_path, capsys, tiny_src):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    assert main(["optimize", str(tiny_src), "-o", str(out), "--passes", "cleanup", "--quiet"]) == 1
    assert "output exists (use --force to overwrite)" in capsys.readouterr().err
    assert out.read_bytes() == b"old"
    assert main(["optimize", str(tiny_src), "-o", str(out), "--passes", "cleanup", "--quiet", "--force"]) == 0
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_output_that_is_a_directory(tmp_path, capsys, tiny_src):
    (tmp_path / "out.onnx").mkdir()
    assert main(["optimize", str(tiny_src), "-o", str(tmp_path / "out.onnx"), "--passes", "cleanup",
                 "--quiet", "--force"]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_output_directory_missing(tmp_path, capsys, tiny_src):
    assert main(["optimize", str(tiny_src), "-o", str(tmp_path / "no" / "out.onnx"), "--passes", "cleanup"]) == 1
    assert "output directory does not exist" in capsys.readouterr().err


def test_output_symlinked_to_input_refused(tmp_path, capsys, tiny_src):
    link = tmp_path / "link.onnx"
    link.symlink_to(tiny_src)
    before = tiny_src.read_bytes()
    assert main(["optimize", str(tiny_src), "-o", str(link), "--passes", "cleanup", "--force"]) == 1
    assert "overwrite the input" in capsys.readouterr().err
    assert tiny_src.read_bytes() == before


def test_report_not_overwritten_without_force(tmp_path, capsys, tiny_src):
    report, out = tmp_path / "r.json", tmp_path / "out.onnx"
    report.write_text("keep")
    assert main(["optimize", str(tiny_src), "-o", str(out), "--passes", "cleanup", "--report", str(report)]) == 1
    assert "r.json: report exists (use --force to overwrite)" in capsys.readouterr().err
    assert report.read_text() == "keep" and not out.exists()
    assert main(["optimize", str(tiny_src), "-o", str(out), "--passes", "cleanup", "--report", str(report),
                 "--force", "--quiet"]) == 0
    assert json.loads(report.read_text())["verification"]["passed"]


# ---------------------------------------------------------------- unusual graphs through every pass
def _vi(name, shape, dtype=T.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(rng, name, shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, extra_opsets=()):
    graph = helper.make_graph(nodes, "unusual", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _if_model(rng):
    """cond = sum(x) > 0 chooses between two branches that read outer-scope weights (Gemm-able MatMul+Add, Conv+BN-like Mul)."""
    then = helper.make_graph([helper.make_node("MatMul", ["h", "w_then"], ["t1"]), helper.make_node("Add", ["t1", "b_then"], ["t_out"])],
                             "then", [], [_vi("t_out", ["N", 16])])
    other = helper.make_graph([helper.make_node("MatMul", ["h", "w_else"], ["e1"]), helper.make_node("Relu", ["e1"], ["e_out"])],
                              "else", [], [_vi("e_out", ["N", 16])])
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m0"]), helper.make_node("Add", ["m0", "b0"], ["h"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("MatMul", ["y", "w1"], ["z"])]
    inits = [_w(rng, "w0", (8, 16)), _w(rng, "b0", (16,)), _w(rng, "w_then", (16, 16)), _w(rng, "b_then", (16,)),
             _w(rng, "w_else", (16, 16)), _w(rng, "w1", (16, 4)), numpy_helper.from_array(np.float32(0), "zero")]
    return _model(nodes, [_vi("x", ["N", 8])], [_vi("z", ["N", 4])], inits)


def _loop_model(rng):
    """Three iterations of state = relu(state @ W + b) in a Loop body, then a Gemm-able head."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["state_in", "w_loop"], ["l1"]), helper.make_node("Add", ["l1", "b_loop"], ["l2"]),
         helper.make_node("Relu", ["l2"], ["state_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [_vi("iter", [], T.INT64), _vi("cond_in", [], T.BOOL), _vi("state_in", [1, 8])],
        [_vi("cond_out", [], T.BOOL), _vi("state_out", [1, 8])])
    nodes = [helper.make_node("Loop", ["trip", "", "x"], ["final"], body=body),
             helper.make_node("MatMul", ["final", "w_head"], ["m"]), helper.make_node("Add", ["m", "b_head"], ["z"])]
    inits = [numpy_helper.from_array(np.array(3, np.int64), "trip"), _w(rng, "w_loop", (8, 8)), _w(rng, "b_loop", (8,)),
             _w(rng, "w_head", (8, 4)), _w(rng, "b_head", (4,))]
    return _model(nodes, [_vi("x", [1, 8])], [_vi("z", [1, 4])], inits)


def _scan_model(rng):
    """A running sum over the sequence axis with a per-step projection (Scan), plus a direct head."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["step", "w_scan"], ["p"]), helper.make_node("Add", ["acc_in", "p"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["out_step"])],
        "scan_body", [_vi("acc_in", [1, 4]), _vi("step", [1, 8])], [_vi("acc_out", [1, 4]), _vi("out_step", [1, 4])])
    nodes = [helper.make_node("Scan", ["acc0", "x"], ["acc", "steps"], body=body, num_scan_inputs=1),
             helper.make_node("MatMul", ["acc", "w_out"], ["z"])]
    inits = [numpy_helper.from_array(np.zeros((1, 4), np.float32), "acc0"), _w(rng, "w_scan", (8, 4)),
             _w(rng, "w_out", (4, 4))]
    return _model(nodes, [_vi("x", [5, 1, 8])], [_vi("z", [1, 4]), _vi("steps", [5, 1, 4])], inits)


def _multi_output_model(rng):
    """Two heads and an intermediate that is both a graph output and consumed further."""
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["feat"]), helper.make_node("Flatten", ["feat"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1),
             helper.make_node("ReduceMean", ["feat"], ["pooled"], axes=[2, 3], keepdims=0)]
    inits = [_w(rng, "cw", (8, 3, 3, 3)), _w(rng, "cb", (8,)), _w(rng, "g", (8,)), _w(rng, "beta", (8,)),
             _w(rng, "mean", (8,)), numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "var"),
             _w(rng, "fw", (10, 8 * 6 * 6)), _w(rng, "fb", (10,))]
    return _model(nodes, [_vi("x", ["N", 3, 6, 6])],
                  [_vi("logits", ["N", 10]), _vi("feat", ["N", 8, 6, 6]), _vi("pooled", ["N", 8])], inits)


def _int64_model(rng):
    """Token ids (int64) -> embedding Gather -> MatMul+Add -> mean; plus an int64 arithmetic output."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("MatMul", ["emb", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["z"], axes=[1], keepdims=0),
             helper.make_node("Add", ["ids", "one"], ["ids_plus"])]
    inits = [_w(rng, "table", (50, 16)), _w(rng, "w", (16, 8)), _w(rng, "b", (8,)),
             numpy_helper.from_array(np.array(1, np.int64), "one")]
    return _model(nodes, [_vi("ids", ["B", "T"], T.INT64)], [_vi("z", ["B", 8]), _vi("ids_plus", ["B", "T"], T.INT64)],
                  inits)


def _dynamic_model(rng):
    """Every dim symbolic except channels: Conv+BN+Relu, Reshape by runtime Shape, MatMul."""
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["z"])]
    inits = [_w(rng, "cw", (16, 4, 3)), _w(rng, "g", (16,)), _w(rng, "beta", (16,)), _w(rng, "mean", (16,)),
             numpy_helper.from_array(rng.uniform(0.5, 2, 16).astype(np.float32), "var"),
             _w(rng, "w", (16, 8)), _w(rng, "b", (8,))]
    return _model(nodes, [_vi("x", ["batch", 4, "time"])], [_vi("z", ["batch", "time", 8])], inits)


def _custom_domain_model(rng):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Gelu", ["hb"], ["g"], domain="com.microsoft"),
             helper.make_node("MatMul", ["g", "w2"], ["m"]), helper.make_node("Add", ["m", "b2"], ["z"])]
    inits = [_w(rng, "w1", (8, 32)), _w(rng, "b1", (32,)), _w(rng, "w2", (32, 4)), _w(rng, "b2", (4,))]
    return _model(nodes, [_vi("x", ["N", 8])], [_vi("z", ["N", 4])], inits, [("com.microsoft", 1)])


UNUSUAL = {"if": _if_model, "loop": _loop_model, "scan": _scan_model, "multi_output": _multi_output_model,
           "int64": _int64_model, "dynamic": _dynamic_model, "custom_domain": _custom_domain_model}


# option variants that make the lossy passes bite on these small graphs
VARIANTS = {"lowrank": ["lowrank{energy=0.999,min_size=0,force=true}"],
            "prune-channels": ["prune-channels{ratio=0.5}"],
            "quantize": ["quantize{mode=dynamic}", "quantize{mode=weight-only,weight_type=int4,block_size=16}"],
            "sparsity-2to4": ["sparsity-2to4{mode=annotate}"],
            "fuse": ["fuse{upgrade_opset=true}"]}


def _real_passes():
    from graphopt.passes import registry

    names = sorted(n for n in registry() if not n.startswith("test-"))
    return names + [v for n in names for v in VARIANTS.get(n, [])]


def _signature(model):
    from graphopt.verify import run_model, synthesize_inputs

    feeds = synthesize_inputs(model, count=1, seed=3)[0]
    return {k: (v.shape, v.dtype) for k, v in run_model(model, feeds).items()}


@pytest.mark.parametrize("kind", sorted(UNUSUAL))
@pytest.mark.parametrize("pass_name", _real_passes())
def test_unusual_graph_through_every_pass(pass_name, kind):
    """Each pass either rewrites correctly (checker, runtime, verification) or leaves the graph alone."""
    import graphopt

    model = UNUSUAL[kind](np.random.default_rng(0))
    result = graphopt.optimize(model, passes=pass_name, thresholds={})
    record = result.report["passes"][0]
    assert "failed" not in record and "rolled_back" not in record, record
    onnx.checker.check_model(result.model, full_check=True)
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    assert _signature(result.model) == _signature(model)
    for node in model.graph.node:  # custom-domain nodes pass through untouched
        if node.domain == "com.microsoft":
            assert any(n.op_type == node.op_type and n.domain == node.domain and list(n.input) == list(node.input)
                       for n in result.model.graph.node), "custom-domain node was modified"
    if not record["changed"]:
        return
    verification = result.report["verification"]
    if record["lossless"]:
        assert verification["passed"], verification
    else:  # lossy: measured, finite and close on these small well-conditioned graphs
        assert all(m.get("nan_or_inf_candidate", 0) == m.get("nan_or_inf_reference", 0)
                   for m in verification["outputs"].values()), verification
        assert verification["cosine"] > 0.5, (pass_name, kind, verification)


# ---------------------------------------------------------------- bad pass options
def _xfail(reason):
    return pytest.mark.xfail(strict=False, reason=reason)




@pytest.mark.parametrize("spec", [
    "fuse{", "nope", "quantize{calibration=bogus}", "prune-channels{ratio=2}", "cleanup{x=1}",
    "fuse{exclude=[(]}",
    "prune-channels{exclude=[(]}",
    "quantize{mode=weight-only,weight_type=int4,block_size=-4}",
    "lowrank{rank=-5}",
    "sparsity-2to4{n=5,m=4}",
    "sparsity-2to4{m=0}",
    "quantize{calibration=percentile,percentile=150}",
    "prune-channels{round_to=0}",
    "cleanup{max_fold_growth=-1}",
])
def test_bad_pass_options_exit_1(tmp_path, capsys, digits_cnn_path, spec):
    src = tmp_path / "cnn.onnx"
    shutil.copy(digits_cnn_path, src)
    _refused(tmp_path, capsys, src, "", passes=spec)


# ---------------------------------------------------------------- minimal repros of fuzz findings in others' passes
# fuse's affine rule folded Add(Add(x, c1), c2) without checking that the inner Add had no other
# reader (found by the fuzz suite; fixed in fuse 7d51c26): kept as regression tests


def test_fuse_affine_fold_keeps_other_readers_sorted():
    import graphopt

    rng = np.random.default_rng(0)
    model = _model([helper.make_node("Add", ["x", "w1"], ["a2"]), helper.make_node("Add", ["a2", "w3"], ["a4"]),
                    helper.make_node("MatMul", ["a2", "w15"], ["m"])],
                   [_vi("x", [2, 18])], [_vi("m", [2, 4]), _vi("a4", [2, 18])],
                   [_w(rng, "w1", (18,)), _w(rng, "w3", (18,)), _w(rng, "w15", (18, 4))])
    result = graphopt.optimize(model, passes="fuse")
    assert result.report["verification"]["passed"]


def test_fuse_affine_fold_keeps_intermediate_graph_output():
    import graphopt

    rng = np.random.default_rng(0)
    model = _model([helper.make_node("Add", ["x", "w1"], ["a"]), helper.make_node("Add", ["a", "w2"], ["b"])],
                   [_vi("x", [2, 8])], [_vi("b", [2, 8]), _vi("a", [2, 8])], [_w(rng, "w1", (8,)), _w(rng, "w2", (8,))])
    result = graphopt.optimize(model, passes="fuse")
    assert [o.name for o in result.model.graph.output] == ["b", "a"]


def test_lowrank_skips_nan_weights():
    import graphopt

    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    weight[3, 4] = np.nan
    model = _model([helper.make_node("Gemm", ["x", "w"], ["y"])], [_vi("x", [1, 64])], [_vi("y", [1, 64])],
                   [numpy_helper.from_array(weight, "w")])
    result = graphopt.optimize(model, passes="lowrank{energy=0.99,min_size=0}")
    assert not result.report["passes"][0]["changed"]


class _Payload:
    """Unpickling this calls Path.touch(marker): stands in for any code an attacker would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_source_does_not_run_code_without_opt_in(tmp_path, capsys):
    import pickle

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pkl"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    code = main(["optimize", str(evil), "-o", str(tmp_path / "out.onnx"), "--passes", "cleanup"])
    assert not marker.exists(), "unpickling the input executed its code"
    assert code == 1
