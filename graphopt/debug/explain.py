"""`explain`: where along the reference's depth the candidate's error appears and grows.

Both models run on the same inputs with every intermediate tensor exposed; corresponding
tensors (graphopt.debug.correspond) are compared with cosine, SNR and max abs error.

Ranking. Each tensor's error is compared with the error it inherited: the worst SNR among
the tensors its reference producer reads (graph inputs and constants count as exact;
tensors without a counterpart pass their own inputs' SNR through). In noise-to-signal
terms nsr = 10^(-snr/10), the error a node *introduced* is

    introduced_db = 10 log10(nsr_out + f) - 10 log10(nsr_in + f),  f = 10^(-floor_db/10)

The floor f (default 60 dB) keeps float round-off (>100 dB) from counting as a jump, and
the log makes a node that turns an exact tensor into a wrong one (0 -> 0.1: +50 dB) rank
above one that merely amplifies an existing error (0.1 -> 0.3: +5 dB). Ties go to the
earlier tensor in topological order.
"""

from __future__ import annotations

import logging
import math

import onnx

from graphopt.debug.correspond import correspondences, dump_step, load_tensor_map, reference_tensors
from graphopt.debug.tensors import (
    SNR_CAP_DB,
    ErrorAccumulator,
    count_samples,
    is_float_array,
    run_exposed,
)

log = logging.getLogger(__name__)

NOISE_FLOOR_DB = 60.0


def explain(reference, candidate, inputs=None, tensor_map=None, top: int = 10,
            noise_floor_db: float = NOISE_FLOOR_DB, seed: int = 0) -> dict:
    """Per-tensor error of `candidate` against `reference` along the reference's topological order.

    `tensor_map`: candidate name -> reference name, or a report (dict / .json path) or a
    --dump-dir whose per-pass tensor maps are chained.
    """
    from graphopt.api import check_same_signature, verification_inputs, as_model

    ref, cand = as_model(reference), as_model(candidate)
    check_same_signature(ref, cand)
    feeds = verification_inputs(ref, inputs, None, seed)
    pairs = correspondences(ref, cand, load_tensor_map(tensor_map, dump_step(candidate)))
    accumulators = _accumulate(ref, cand, feeds, pairs)
    layers = _layers(ref, cand, pairs, accumulators, noise_floor_db)
    ranking = sorted((row for row in layers if row.get("introduced_db") is not None),
                     key=lambda row: (-row["introduced_db"], row["index"]))
    threshold_nsr = 10 ** (-noise_floor_db / 10)
    first = next((row for row in layers if "snr_db" in row and 10 ** (-row["snr_db"] / 10) > threshold_nsr),
                 None)
    produced = sum(1 for node in cand.graph.node for o in node.output if o)
    return {"samples": count_samples(feeds), "noise_floor_db": noise_floor_db,
            "tensors_compared": len(layers),
            "candidate_tensors_unmatched": produced - len({c for _, c, _ in pairs}),
            "first_divergence": first, "ranking": ranking[:top], "layers": layers}


def _accumulate(ref, cand, feeds, pairs) -> dict[tuple[str, str], ErrorAccumulator]:
    """Run both models batch by batch and fold every pair's error into its accumulator."""
    ref_names = sorted({r for r, _, _ in pairs})
    cand_names = sorted({c for _, c, _ in pairs})
    accumulators = {(r, c): ErrorAccumulator() for r, c, _ in pairs}
    runs = zip(feeds, run_exposed(ref, feeds, ref_names, "reference"),
               run_exposed(cand, feeds, cand_names, "candidate"))
    for batch, ref_values, cand_values in runs:
        ref_values = {**batch, **ref_values}  # graph inputs are compared as they were fed
        for (r, c), acc in accumulators.items():
            a, b = ref_values.get(r), cand_values.get(c)
            if is_float_array(a) and is_float_array(b):
                acc.add(a, b)
    return {key: acc for key, acc in accumulators.items() if acc.count or acc.shape_mismatch}


def _layers(ref: onnx.ModelProto, cand: onnx.ModelProto, pairs, accumulators, floor_db: float) -> list[dict]:
    """Rows in reference topological order, each with its error and the error it introduced."""
    producer = {name: (-1, None) for name in reference_tensors(ref)}  # graph inputs come first
    producer.update({o: (i, node) for i, node in enumerate(ref.graph.node) for o in node.output if o})
    cand_op = {o: node.op_type for node in cand.graph.node for o in node.output if o}
    rows = []
    for r, c, how in pairs:
        acc = accumulators.get((r, c))
        if acc is None:
            continue
        index, node = producer[r]
        rows.append({"index": index, "tensor": r, "candidate": c, "via": how,
                     "op_type": node.op_type if node is not None else "(input)",
                     "candidate_op_type": cand_op.get(c), "node": node.name if node is not None else "",
                     **acc.metrics()})
    rows.sort(key=lambda row: (row["index"], row["via"] == "qdq", row["candidate"]))
    snr_of: dict[str, float] = {}
    for row in rows:  # what consumers see: the worst of a tensor's counterparts (the QDQ one)
        if "snr_db" in row:
            snr_of[row["tensor"]] = min(snr_of.get(row["tensor"], SNR_CAP_DB), row["snr_db"])
    upstream = _UpstreamSnr(producer, snr_of)
    direct_snr: dict[str, float] = {}
    for row in rows:
        if "snr_db" not in row:
            row["introduced_db"] = None
            continue
        if row["via"] == "qdq" and row["tensor"] in direct_snr:
            inherited = direct_snr[row["tensor"]]  # quantizing this activation is the new error
        else:
            inherited = upstream.of_inputs(producer[row["tensor"]][1])
            direct_snr.setdefault(row["tensor"], row["snr_db"])
        row["inherited_snr_db"] = inherited
        row["introduced_db"] = _growth_db(inherited, row["snr_db"], floor_db)
    return rows


class _UpstreamSnr:
    """SNR of a tensor as its readers see it; tensors without a counterpart pass theirs through."""

    def __init__(self, producer, snr_of):
        self.producer, self.snr_of, self.memo = producer, snr_of, {}

    def of_inputs(self, node) -> float:
        if node is None:  # a graph input: fed identically to both models
            return SNR_CAP_DB
        return min((self.of(name) for name in node.input if name), default=SNR_CAP_DB)

    def of(self, name: str) -> float:
        if name in self.snr_of:
            return self.snr_of[name]
        if self.producer.get(name, (0, None))[1] is None:
            return SNR_CAP_DB  # graph input or constant: identical in both models
        if name not in self.memo:
            self.memo[name] = SNR_CAP_DB  # cycle guard; graphs are acyclic
            self.memo[name] = self.of_inputs(self.producer[name][1])
        return self.memo[name]


def _growth_db(inherited_snr: float, snr: float, floor_db: float) -> float:
    floor = 10 ** (-floor_db / 10)
    nsr_in, nsr_out = 10 ** (-inherited_snr / 10), 10 ** (-snr / 10)
    return round(10 * math.log10(nsr_out + floor) - 10 * math.log10(nsr_in + floor), 4)
