"""Which candidate tensor holds the value of which reference tensor.

Three sources, tried in order for every tensor a candidate node produces:
1. QDQ: the output of DequantizeLinear(QuantizeLinear(x)) holds x's value up to
   quantization error, so it corresponds to whatever x corresponds to.
2. The rewrite log: each pass's `tensor_map` maps its new tensors to tensors of its input
   graph holding the same value (a fused Conv's output -> the folded BN's output).
   Chained over the passes in order, new names resolve to names of the original graph.
   A name mapped to "" (or None) has no counterpart: a pass that gives an old name to a
   new value (a Relu folded away, its output name now on the Add before it) says so.
3. Same name, unless the name moved: when a pass folds an activation away (a Relu
   absorbed by uint8 quantization) and hands its output name to the node before it, the
   candidate tensor is produced by an op of the activation's input's kind (Add where the
   reference has Add -> Relu), so it holds the activation's *input*, and maps there.
A candidate tensor corresponds to a reference tensor when the resolved name is produced
by a node of the reference graph.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx

from graphopt.errors import InputError

log = logging.getLogger(__name__)

# Elementwise activations a pass may fold into its neighbour (quantization clipping, fusion).
ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Elu"}


def chain_tensor_maps(records: list[dict]) -> dict[str, str]:
    """Compose per-pass `tensor_map`s (new -> name in that pass's input) into new -> original."""
    to_original: dict[str, str] = {}
    for record in records:
        step = {new: to_original.get(old, old) if old else "" for new, old in (record.get("tensor_map") or {}).items()}
        to_original.update(step)
    return {k: v for k, v in to_original.items() if k != v}


def load_tensor_map(source, upto_step: int | None = None) -> dict[str, str]:
    """A tensor map from a dict, a report dict, a report .json path, or a --dump-dir
    (only its steps up to `upto_step` when the candidate is that step's NN-pass.onnx)."""
    if source is None:
        return {}
    if isinstance(source, dict):
        if "passes" in source:
            return chain_tensor_maps(source.get("passes") or [])
        return {str(k): str(v) if v else "" for k, v in source.items()}
    if isinstance(source, (list, tuple)):
        return chain_tensor_maps(list(source))
    path = Path(source)
    if path.is_dir():
        steps = sorted(p for p in path.glob("[0-9][0-9]-*.json")
                       if upto_step is None or int(p.name[:2]) <= upto_step)
        if not steps and upto_step is None:
            raise InputError(f"{path}: no NN-pass.json step reports in this dump directory")
        return chain_tensor_maps([_read_json(p) for p in steps])
    if not path.is_file():
        raise InputError(f"{path}: no such report file or dump directory")
    report = _read_json(path)
    if not isinstance(report, dict) or "passes" not in report:
        raise InputError(f"{path}: not a graphopt report (no 'passes' key)")
    return chain_tensor_maps(report["passes"])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not readable JSON ({err})") from err


def correspondences(reference: onnx.ModelProto, candidate: onnx.ModelProto,
                    tensor_map: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(reference tensor, candidate tensor, how) for every candidate node output that matches."""
    tensor_map = tensor_map or {}
    known = reference_tensors(reference)
    made = {o: node for node in candidate.graph.node for o in node.output if o}
    ref_made = {o: node for node in reference.graph.node for o in node.output if o}
    pairs = []
    for node in candidate.graph.node:
        for out in node.output:
            if not out:
                continue
            source, how = _resolve(out, made, tensor_map, known)
            if how == "name":
                source, how = _moved_name(source, node, ref_made)
            if source in known:
                pairs.append((source, out, how))
    log.debug("%d candidate tensors correspond to reference tensors", len(pairs))
    return pairs


def reference_tensors(reference: onnx.ModelProto) -> set[str]:
    """Names a candidate tensor can correspond to: node outputs and real graph inputs."""
    inits = {t.name for t in reference.graph.initializer}
    return ({o for node in reference.graph.node for o in node.output if o}
            | {i.name for i in reference.graph.input if i.name not in inits})


def _moved_name(name: str, cand_node: onnx.NodeProto, ref_made: dict) -> tuple[str, str]:
    """A same-named tensor whose reference producer is an activation the candidate folded away."""
    ref_node = ref_made.get(name)
    if ref_node is None or ref_node.op_type not in ACTIVATIONS or cand_node.op_type == ref_node.op_type:
        return name, "name"
    # The candidate computes the activation's input under its name (the activation was
    # absorbed, e.g. a Relu into uint8 ranges; the producer may also have absorbed a BN).
    applies_activation = any(a.name == "activation" for a in cand_node.attribute)  # e.g. FusedConv
    if ref_node.input and ref_node.input[0] in ref_made and not applies_activation:
        return ref_node.input[0], "activation-folded"
    return name, "name"


def _resolve(name: str, made: dict, tensor_map: dict[str, str], known: set[str],
             depth: int = 0) -> tuple[str | None, str]:
    """(reference name or None, how); an explicit log entry wins over the QDQ rule, since a
    pass that folded a Relu into the quantization knows the DQ output is the Relu output.
    A DQ output whose source has no counterpart but which took the original tensor's name
    (onnxruntime's quantizer renames the float tensor instead) corresponds by that name."""
    node = made.get(name)
    quant = made.get(node.input[0]) if node is not None and node.op_type == "DequantizeLinear" else None
    is_qdq = quant is not None and quant.op_type == "QuantizeLinear"
    if name in tensor_map:
        return tensor_map[name] or None, "qdq" if is_qdq else "rewrite-log"
    if is_qdq and depth < 8:
        source = _resolve(quant.input[0], made, tensor_map, known, depth + 1)[0]
        return (source if source in known else name if name in known else None), "qdq"
    return name, "name"


def dump_step(candidate) -> int | None:
    """The step number of a candidate given as a dump file path (`03-quantize.onnx` -> 3)."""
    if not isinstance(candidate, (str, Path)):
        return None
    name = Path(candidate).name
    return int(name[:2]) if len(name) > 3 and name[:2].isdigit() and name[2] == "-" else None
