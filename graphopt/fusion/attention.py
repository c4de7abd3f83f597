"""Multi-head attention to one node: com.microsoft Attention, or ONNX Attention (opset 23).

    q = x @ Wq + bq;  k = x @ Wk + bk;  v = x @ Wv + bv                (B, S, H*D)
    Q = Transpose(Reshape(q, [B, S, H, D]), [0, 2, 1, 3])              (B, H, S, D)
    Kt = Transpose(Reshape(k, [B, S, H, D]), [0, 2, 3, 1])              (B, H, D, S)
    V = Transpose(Reshape(v, [B, S, H, D]), [0, 2, 1, 3])
    P = Softmax((Q @ Kt) * scale [+ bias], axis=-1)
    out = Reshape(Transpose(P @ V, [0, 2, 1, 3]), [B, S, H*D])
      == Attention(x, [Wq|Wk|Wv], [bq|bk|bv], attention_bias=bias; num_heads=H, scale=scale)
                                                          (com.microsoft, self-attention)
      == Attention(q, k, v, attn_mask=bias; q_num_heads=H, kv_num_heads=H, scale=scale)
                                                          (ONNX opset 23, any q/k/v sources)

The contrib form replaces 19 nodes (the projections included) and only fires when the
target lists "com.microsoft" in `contrib_domains` (onnxruntime's CPU and GPU targets do).
The standard form replaces the 13 nodes after the projections and needs opset 23 (or
upgrade_opset=true); it is tried when the contrib form does not apply.

Preconditions (both): the head reshapes have constant targets [0|-1|B, 0|-1|S, H|-1, D|-1]
(one -1 at most) on rank-3 sources; q and k have the same heads; scale is a constant scalar
(Mul or Div, or none); Softmax is over the last axis; an additive mask is a rank-4 float
tensor (when shape inference cannot prove it has the scores' last two dims it is expanded
to (., ., S, T) first, once, shared by every layer: onnxruntime's kernels do not broadcast
those dims); the output reshape restores (B, S, H*Dv); every intermediate is read only
inside the pattern. Contrib form also: the three projections read the same float32 x with
constant 2-D weights (biases constant 1-D or absent) of one width H*D.
"""

from __future__ import annotations

import numpy as np

from graphopt.fusion.graph import FusionGraph, attr, scalar
from graphopt.fusion.rule import Match, Rule

DOMAIN = "com.microsoft"
HEADS_PERM = [0, 2, 1, 3]
KEYS_PERM = [0, 2, 3, 1]


def _target_allows(g: FusionGraph) -> bool:
    return g.target is not None and DOMAIN in tuple(getattr(g.target, "contrib_domains", ()))


def _perm_is(node, perm: list[int]) -> bool:
    return node is not None and node.op_type == "Transpose" and list(attr(node, "perm", [])) == perm


def _projection(g: FusionGraph, name: str):
    """x, weight, bias (or None) and nodes of `name` = x @ W (+ b)."""
    node = g.producer(name)
    bias, nodes = None, []
    if node is not None and node.op_type == "Add":
        for i in (0, 1):
            matmul = g.producer(node.input[i], "MatMul")
            if matmul is not None and g.is_const(node.input[1 - i]):
                bias, nodes, node = node.input[1 - i], [node], matmul
                break
    if node is None or node.op_type != "MatMul" or not g.is_const(node.input[1]):
        return None
    return node.input[0], node.input[1], bias, nodes + [node]


def _heads(g: FusionGraph, transpose, perm: list[int]):
    """(source, heads, head size, nodes) of Transpose(Reshape(source, [., ., H, D]), perm), source
    a rank-3 (B, S, H*D) tensor."""
    if not _perm_is(transpose, perm):
        return None
    reshape = g.producer(transpose.input[0], "Reshape")
    if reshape is None or not g.is_const(reshape.input[1]):
        return None
    target = g.value(reshape.input[1]).reshape(-1).tolist()
    shape = g.shape(reshape.input[0])
    if shape is None or len(shape) != 3 or len(target) != 4 or target.count(-1) > 1 or 0 in target[2:]:
        return None
    width = shape[2]
    if -1 in target[2:]:  # [., ., -1, D] or [., ., H, -1]: the source width decides
        known = target[3] if target[2] == -1 else target[2]
        if width is None or known <= 0 or width % known:
            return None
        target[target.index(-1)] = width // known
    if min(target[2:]) <= 0 or (width is not None and width != target[2] * target[3]):
        return None
    for got, dim in zip(target[:2], shape[:2]):
        if got not in (0, -1) and got != dim:
            return None
    return reshape.input[0], target[2], target[3], [transpose, reshape]


def _scaled_scores(g: FusionGraph, name: str):
    """(scores MatMul, scale, scale nodes, bias or None, bias nodes) for a Softmax input."""
    node, bias, bias_nodes = g.producer(name), None, []
    if node is not None and node.op_type == "Add":
        for i in (0, 1):
            inner = g.producer(node.input[i])
            if inner is not None and inner.op_type in ("Mul", "Div", "MatMul"):
                bias, bias_nodes, node = node.input[1 - i], [node], inner
                break
    scale, scale_nodes = 1.0, []
    if node is not None and node.op_type in ("Mul", "Div"):
        for i in ((0,) if node.op_type == "Div" else (0, 1)):
            inner = g.producer(node.input[i], "MatMul")
            factor = scalar(g.value(node.input[1 - i])) if g.is_const(node.input[1 - i]) else None
            if inner is not None and factor:
                scale = factor if node.op_type == "Mul" else 1.0 / factor
                scale_nodes, node = [node], inner
                break
    if node is None or node.op_type != "MatMul":
        return None
    return node, scale, scale_nodes, bias, bias_nodes


def match_core(g: FusionGraph, out) -> Match | None:
    """Scaled-dot-product attention from the head splits to the output Reshape (anchor)."""
    back = g.producer(out.input[0], "Transpose")
    context = g.producer(back.input[0], "MatMul") if _perm_is(back, HEADS_PERM) else None
    softmax = g.producer(context.input[0], "Softmax") if context is not None else None
    if softmax is None:
        return None
    scores = _scaled_scores(g, softmax.input[0])
    if scores is None:
        return None
    qk, scale, scale_nodes, bias, bias_nodes = scores
    parts = {key: _heads(g, g.producer(tensor, "Transpose"), perm) for key, tensor, perm in
             (("q", qk.input[0], HEADS_PERM), ("k", qk.input[1], KEYS_PERM), ("v", context.input[1], HEADS_PERM))}
    if any(p is None for p in parts.values()):
        return None
    nodes = [out, back, context, softmax] + bias_nodes + scale_nodes + [qk]
    nodes += [n for p in parts.values() for n in p[3]]
    return Match(nodes, {"parts": parts, "scale": scale, "bias": bias, "softmax": softmax, "qk": qk})


def match_attention(g: FusionGraph, out) -> Match | None:
    if not _target_allows(g):
        return None
    m = match_core(g, out)
    if m is None:
        return None
    projections = {key: _projection(g, part[0]) for key, part in m["parts"].items()}
    if any(p is None for p in projections.values()):
        return None
    m.data["projections"] = projections
    m.nodes += [n for p in projections.values() for n in p[3]]
    return m


def _restores_tokens(g: FusionGraph, out, x: str, width: int) -> bool:
    """The output Reshape gives (B, S, H*D) for x of shape (B, S, .)."""
    if g.is_const(out.input[1]):
        target = g.value(out.input[1]).reshape(-1).tolist()
        x_shape = g.shape(x) or (None, None)
        return (len(target) == 3 and target[2] in (width, -1) and target[:2].count(-1) + (target[2] == -1) <= 1
                and all(t in (0, -1) or t == d for t, d in zip(target[:2], x_shape[:2])))
    got, want = g.symbolic_shape(out.output[0]), g.symbolic_shape(x)
    return (got is not None and want is not None and len(got) == 3 and len(want) == 3
            and all(a is not None and a == b for a, b in zip(got[:2], want[:2])))


def _bias_fits(g: FusionGraph, bias: str, scores: str) -> bool:
    shape, full = g.symbolic_shape(bias), g.symbolic_shape(scores)
    if shape is None or full is None or len(shape) != 4 or len(full) != 4:
        return False
    lead = all(a == 1 or (a is not None and a == b) for a, b in zip(shape[:2], full[:2]))
    return lead and all(a is not None and a == b for a, b in zip(shape[2:], full[2:]))


def _core_reason(g: FusionGraph, m: Match, where: str) -> str | None:
    """Preconditions shared by both rewrites (the q source is the token tensor x)."""
    x = m["parts"]["q"][0]
    if attr(m["softmax"], "axis", -1 if g.opset >= 13 else 1) not in (-1, 3):
        return f"{where}: Softmax is not over the last axis"
    heads, size = m["parts"]["q"][1:3]
    if m["parts"]["k"][1:3] != (heads, size):
        return f"{where}: key heads {m['parts']['k'][1:3]} differ from the query's {(heads, size)}"
    if not _restores_tokens(g, m.anchor, x, heads * m["parts"]["v"][2]):
        return f"{where}: the output reshape is not (batch, sequence, heads * head size)"
    if m["bias"] is not None and (g.dtype(m["bias"]) not in (1, 10, 16) or g.rank(m["bias"]) not in (None, 4)):
        return f"{where}: additive mask is not a rank-4 float tensor"
    inside = {id(n) for n in m.nodes}
    for node in m.nodes[1:]:
        if node.output[0] in g.outputs or any(id(u) not in inside for u in g.users(node.output[0])):
            return f"{where}: {node.op_type} {node.name!r} has readers outside the pattern"
    return None


def check_attention(g: FusionGraph, m: Match) -> str | None:
    where = f"attention at {m.anchor.name!r} not fused to com.microsoft Attention"
    reason = _core_reason(g, m, where)
    if reason:
        return reason
    x = m["projections"]["q"][0]
    heads, size = m["parts"]["q"][1:3]
    for key, proj in m["projections"].items():
        if proj[0] != x:
            return f"{where}: {key} projection reads another input (not self-attention)"
        if m["parts"][key][1:3] != (heads, size):
            return f"{where}: {key} heads {m['parts'][key][1:3]} differ from q's {(heads, size)}"
        weight = g.value(proj[1])
        if weight.ndim != 2 or weight.shape[1] != heads * size:
            return f"{where}: {key} weight {weight.shape} is not (hidden, {heads * size})"
        if proj[2] is not None and g.value(proj[2]).shape != (heads * size,):
            return f"{where}: {key} bias is not a ({heads * size},) vector"
    if g.dtype(x) != 1 or g.rank(x) != 3:
        return f"{where}: input is not a rank-3 float32 tensor"
    if m["bias"] is not None:
        if g.dtype(m["bias"]) != 1:
            return f"{where}: additive mask is not float32"
        m.data["expand_bias"] = not _bias_fits(g, m["bias"], m["qk"].output[0])
    return None


def _length_key(g: FusionGraph, source: str):
    """What identifies source.shape[1]: its symbolic dim when shape inference named one (the
    layers of an encoder share it), else the tensor itself."""
    shape = g.symbolic_shape(source)
    dim = shape[1] if shape is not None and len(shape) > 1 else None
    return ("dim", dim) if dim is not None else ("tensor", source)


def _full_bias(g: FusionGraph, bias: str, queries: str, keys: str, before) -> str:
    """Expand(bias, [1, 1, S, T]) with S = queries.shape[1], T = keys.shape[1]: onnxruntime's
    attention kernels want the mask's last two dims in full, while the Add they replace may
    have broadcast them. Built once per bias and (S, T), shared by the layers that have them."""
    key = ("attention_bias", bias, _length_key(g, queries), _length_key(g, keys))
    if key in g.memo and g.memo[key] in g._names:
        return g.memo[key]
    ones = g.add_constant(np.ones(2, np.int64), f"{bias}_ones", before=before)
    index = g.add_constant(np.array([1], np.int64), f"{bias}_index", before=before)
    lengths = []
    for source in dict.fromkeys((queries, keys)):
        shape, length = g.fresh(f"{bias}_shape"), g.fresh(f"{bias}_len")
        g.insert_before(g.make_node("Shape", [source], [shape], "attention_fused", shape), before)
        g.insert_before(g.make_node("Gather", [shape, index], [length], "attention_fused", length, axis=0), before)
        lengths.append(length)
    target, full = g.fresh(f"{bias}_target"), g.fresh(f"{bias}_full")
    g.insert_before(g.make_node("Concat", [ones, lengths[0], lengths[-1]], [target], "attention_fused", target,
                                axis=0), before)
    g.insert_before(g.make_node("Expand", [bias, target], [full], "attention_fused", full), before)
    g.memo[key] = full
    return full


def rewrite_attention(g: FusionGraph, m: Match) -> None:
    out = m.anchor
    parts = [m["projections"][key] for key in ("q", "k", "v")]
    x = parts[0][0]
    weight = np.concatenate([g.value(p[1]) for p in parts], axis=1)
    bias = np.concatenate([g.value(p[2]).reshape(-1) if p[2] is not None else np.zeros(weight.shape[1] // 3)
                           for p in parts]).astype(weight.dtype)
    base = out.name or out.output[0]
    inputs = [x, g.add_constant(weight, f"{base}_qkv_weight", before=out),
              g.add_constant(bias, f"{base}_qkv_bias", before=out)]
    if m["bias"] is not None:
        bias_name = _full_bias(g, m["bias"], x, x, out) if m["expand_bias"] else m["bias"]
        inputs += ["", "", bias_name]
    node = g.make_node("Attention", inputs, [out.output[0]], "attention_fused", base, domain=DOMAIN,
                       num_heads=int(m["parts"]["q"][1]), scale=float(m["scale"]))
    g.used_domains.add(DOMAIN)
    g.insert_before(node, out)
    g.remove(*m.nodes)


def check_standard(g: FusionGraph, m: Match) -> str | None:
    where = f"attention at {m.anchor.name!r} not fused to Attention"
    if not g.opset_allows(23):
        return f"{where}: opset {g.opset} < 23 (upgrade_opset=true allows it)"
    if not g.supports("Attention"):
        return f"{where}: target lacks Attention"
    if any(g.dtype(m["parts"][key][0]) not in (1, 10, 16) for key in "qkv"):
        return f"{where}: q/k/v are not float tensors"
    return _core_reason(g, m, where)


def rewrite_standard(g: FusionGraph, m: Match) -> None:
    """ONNX Attention (opset 23) on 3-D q/k/v: it splits and merges the heads itself."""
    g.needed_opset = max(g.needed_opset, 23)
    out, parts = m.anchor, m["parts"]
    inputs = [parts[key][0] for key in "qkv"]
    if m["bias"] is not None:
        fits = _bias_fits(g, m["bias"], m["qk"].output[0])
        inputs.append(m["bias"] if fits else _full_bias(g, m["bias"], inputs[0], inputs[1], out))
    node = g.make_node("Attention", inputs, [out.output[0]], "attention_fused", out.name or out.output[0],
                       q_num_heads=int(parts["q"][1]), kv_num_heads=int(parts["k"][1]), scale=float(m["scale"]))
    g.insert_before(node, out)
    g.remove(*m.nodes)


RULES = [Rule("attention_fused", ("Reshape",), match_attention, check_attention, rewrite_attention,
              "Q/K/V projections + scaled-dot-product attention to com.microsoft Attention "
              "(targets with that contrib domain)"),
         Rule("attention_fused", ("Reshape",), match_core, check_standard, rewrite_standard,
              "scaled-dot-product attention to Attention (opset 23; upgrade_opset=true allows it)")]
