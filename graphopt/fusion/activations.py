"""Activation pattern fusion to standard ops: HardSigmoid, HardSwish, Gelu.

    HardSigmoid(x; 1/6, 1/2) = max(0, min(1, x/6 + 1/2)) = Clip(x + 3, 0, 6) / 6
    HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2)                       (opset 14)
    Gelu(x) = x/2 * (1 + erf(x / sqrt 2))                             (opset 20)

Forms matched (Div by 6 and Mul by 1/6 alike; Clip bounds as attributes or inputs):
    Clip(Add(x, 3), 0, 6) / 6                   -> HardSigmoid(x)
    (x * Clip(Add(x, 3), 0, 6)) / 6             -> HardSwish(x), or x * HardSigmoid(x) below opset 14
    x * HardSigmoid(x; 1/6, 1/2)                -> HardSwish(x)
    Gelu erf forms: ((x * (1 + erf(x/√2))) * 0.5), (x * 0.5) * (1 + erf(x/√2)),
                    x * ((1 + erf(x/√2)) * 0.5)  (x/√2 also as x * 0.7071...)
    Gelu tanh forms: the same tails around 1 + tanh(√(2/π) * (x + 0.044715 * x³)),
                    x³ as Pow(x, 3) or x * x * x      -> Gelu(x, approximate="tanh")
Below opset 20 (without upgrade_opset), targets that opt into com.microsoft get
onnxruntime's contrib Gelu / FastGelu instead (graphopt/fusion/contrib.py).
The rewritten forms agree to float32 round-off (1/6 and 1/√2 are not exact in float32).
"""

from __future__ import annotations

import math


from graphopt.fusion.graph import FusionGraph, attr, scalar
from graphopt.fusion.rule import Match, Rule

SIXTH = 1.0 / 6.0


def _close(value: float | None, expected: float, rel: float = 1e-4) -> bool:
    return value is not None and abs(value - expected) <= rel * max(abs(expected), 1e-12)


def _binary_const(g: FusionGraph, node, commutative: bool = True):
    """(variable input, constant scalar) of a binary node with a one-element constant."""
    if len(node.input) != 2:
        return None
    for var, const in ((0, 1), (1, 0)) if commutative else ((0, 1),):
        value = scalar(g.value(node.input[const])) if g.is_const(node.input[const]) else None
        if value is not None:
            return node.input[var], value
    return None


def _divided_by_six(g: FusionGraph, node):
    """The tensor `node` divides by 6 (Div by 6 or Mul by 1/6), or None."""
    if node.op_type == "Div":
        split = _binary_const(g, node, commutative=False)
        return split[0] if split and _close(split[1], 6.0) else None
    split = _binary_const(g, node)
    return split[0] if split and _close(split[1], SIXTH) else None


def _relu6_of_shift(g: FusionGraph, name: str):
    """(Clip, Add, x) when `name` = Clip(Add(x, 3), 0, 6), else None."""
    clip = g.producer(name, "Clip")
    if clip is None:
        return None
    if len(clip.input) > 1:
        lo = scalar(g.value(clip.input[1])) if clip.input[1] else None
        hi = scalar(g.value(clip.input[2])) if len(clip.input) > 2 and clip.input[2] else None
    else:
        lo, hi = attr(clip, "min"), attr(clip, "max")
    if lo is None or hi is None or lo != 0.0 or hi != 6.0:
        return None
    add = g.producer(clip.input[0], "Add")
    split = None if add is None else _binary_const(g, add)
    if split is None or split[1] != 3.0:
        return None
    return clip, add, split[0]


def _hard_sigmoid_attrs() -> dict:
    return {"alpha": SIXTH, "beta": 0.5}


# ---------------------------------------------------------------- Clip(x+3,0,6)/6 [* x]
def match_hard(g: FusionGraph, node) -> Match | None:
    inner = _divided_by_six(g, node)
    if inner is None:
        return None
    relu6 = _relu6_of_shift(g, inner)
    if relu6 is not None:
        return Match([node, relu6[0], relu6[1]], {"x": relu6[2], "swish": False})
    mul = g.producer(inner, "Mul")
    if mul is None or len(mul.input) != 2:
        return None
    for i in (0, 1):
        relu6 = _relu6_of_shift(g, mul.input[i])
        if relu6 is not None and relu6[2] == mul.input[1 - i]:
            return Match([node, mul, relu6[0], relu6[1]], {"x": relu6[2], "swish": True})
    return None


def check_hard(g: FusionGraph, m: Match) -> str | None:
    kind = "HardSwish" if m["swish"] else "HardSigmoid"
    if not all(g.private(n.output[0]) for n in m.nodes[1:]):
        return f"{kind} form at {m.anchor.name!r} not fused: an intermediate has other readers"
    if not g.is_float(m["x"]) and g.dtype(m["x"]) is not None:
        return f"{kind} form at {m.anchor.name!r} not fused: input is not float"
    if not g.supports("HardSigmoid"):
        return f"{kind} form at {m.anchor.name!r} not fused: target lacks HardSigmoid"
    return None


def rewrite_hard(g: FusionGraph, m: Match) -> None:
    anchor, x = m.anchor, m["x"]
    base = anchor.name or anchor.output[0]
    if m["swish"] and g.opset_allows(14) and g.supports("HardSwish"):
        g.needed_opset = max(g.needed_opset, 14)
        new = [g.make_node("HardSwish", [x], [anchor.output[0]], "hard_activation_fused", base)]
    elif m["swish"]:
        hs_out = g.fresh(f"{base}_hardsigmoid")
        new = [g.make_node("HardSigmoid", [x], [hs_out], "hard_activation_fused", f"{base}_hardsigmoid",
                           **_hard_sigmoid_attrs()),
               g.make_node("Mul", [x, hs_out], [anchor.output[0]], "hard_activation_fused", base)]
    else:
        new = [g.make_node("HardSigmoid", [x], [anchor.output[0]], "hard_activation_fused", base,
                           **_hard_sigmoid_attrs())]
    for node in new:
        g.insert_before(node, anchor)
    g.remove(*m.nodes)


def match_swish(g: FusionGraph, mul) -> Match | None:
    if len(mul.input) != 2:
        return None
    for i in (0, 1):
        hs = g.producer(mul.input[i], "HardSigmoid")
        if (hs is not None and hs.input[0] == mul.input[1 - i] and _close(attr(hs, "alpha", 0.2), SIXTH)
                and _close(attr(hs, "beta", 0.5), 0.5)):
            return Match([mul, hs])
    return None


def check_swish(g: FusionGraph, m: Match) -> str | None:
    mul, hs = m.nodes
    where = f"x * HardSigmoid(x) at {mul.name!r} not fused to HardSwish"
    if not g.opset_allows(14):
        return f"{where}: opset {g.opset} < 14 (upgrade_opset=true allows it)"
    if not g.private(hs.output[0]):
        return f"{where}: HardSigmoid has other readers"
    if not g.supports("HardSwish"):
        return f"{where}: target lacks HardSwish"
    return None


def rewrite_swish(g: FusionGraph, m: Match) -> None:
    mul, hs = m.nodes
    g.needed_opset = max(g.needed_opset, 14)
    node = g.make_node("HardSwish", [hs.input[0]], [mul.output[0]], "hardswish_fused", mul.name or hs.name)
    g.insert_before(node, hs)
    g.remove(mul, hs)


# ---------------------------------------------------------------- Gelu (erf form)
def match_gelu(g: FusionGraph, erf) -> Match | None:
    scaled = g.producer(erf.input[0])
    if scaled is None or scaled.op_type not in ("Div", "Mul"):
        return None
    split = _binary_const(g, scaled, commutative=scaled.op_type == "Mul")
    want = math.sqrt(2.0) if scaled.op_type == "Div" else 1.0 / math.sqrt(2.0)
    if split is None or not _close(split[1], want):
        return None
    x = split[0]
    add = g.only_user(erf.output[0])
    if add is None or add.op_type != "Add" or not _close((_binary_const(g, add) or (None, None))[1], 1.0):
        return None
    return _gelu_tail(g, erf, scaled, add, x)


def _gelu_tail(g: FusionGraph, erf, scaled, add, x) -> Match | None:
    """The Mul nodes that turn 1 + erf into x/2 * (1 + erf) (three association orders)."""
    m1 = g.only_user(add.output[0])
    if m1 is None or m1.op_type != "Mul" or len(m1.input) != 2:
        return None
    other = m1.input[1] if m1.input[0] == add.output[0] else m1.input[0]
    if other == x:  # (x * (1 + erf)) * 0.5
        m2 = g.only_user(m1.output[0])
        half = m2 is not None and m2.op_type == "Mul" and _close((_binary_const(g, m2) or (0, None))[1], 0.5)
        return Match([m2, m1, add, erf, scaled], {"x": x}) if half else None
    split = _binary_const(g, m1)
    if split is not None and _close(split[1], 0.5):  # x * ((1 + erf) * 0.5)
        m2 = g.only_user(m1.output[0])
        ok = m2 is not None and m2.op_type == "Mul" and x in m2.input
        return Match([m2, m1, add, erf, scaled], {"x": x}) if ok else None
    pre = g.producer(other, "Mul")  # (x * 0.5) * (1 + erf)
    split = None if pre is None else _binary_const(g, pre)
    if split is not None and split[0] == x and _close(split[1], 0.5):
        return Match([m1, pre, add, erf, scaled], {"x": x})
    return None


# ---------------------------------------------------------------- Gelu (tanh form)
def _cube_of(g: FusionGraph, name: str):
    """(x, nodes) when `name` = Pow(x, 3), x * (x * x) or (x * x) * x."""
    node = g.producer(name)
    if node is None or len(node.input) != 2:
        return None
    if node.op_type == "Pow" and g.is_const(node.input[1]) and scalar(g.value(node.input[1])) == 3.0:
        return node.input[0], [node]
    if node.op_type != "Mul":
        return None
    for i in (0, 1):
        square = g.producer(node.input[i], "Mul")
        x = node.input[1 - i]
        if square is not None and list(square.input) == [x, x]:
            return x, [node, square]
    return None


def match_gelu_tanh(g: FusionGraph, tanh) -> Match | None:
    scaled = g.producer(tanh.input[0], "Mul")
    split = None if scaled is None else _binary_const(g, scaled)
    inner = g.producer(split[0], "Add") if split and _close(split[1], math.sqrt(2.0 / math.pi)) else None
    if inner is None or len(inner.input) != 2:
        return None
    for i in (0, 1):
        x, cubic = inner.input[i], g.producer(inner.input[1 - i], "Mul")
        term = None if cubic is None else _binary_const(g, cubic)
        cube = _cube_of(g, term[0]) if term and _close(term[1], 0.044715) else None
        if cube is not None and cube[0] == x:
            break
    else:
        return None
    add = g.only_user(tanh.output[0])
    if add is None or add.op_type != "Add" or not _close((_binary_const(g, add) or (None, None))[1], 1.0):
        return None
    m = _gelu_tail(g, tanh, scaled, add, x)
    if m is None:
        return None
    m.nodes += [inner, cubic] + cube[1]
    m.data["approximate"] = "tanh"
    return m


def check_gelu(g: FusionGraph, m: Match) -> str | None:
    where = f"Gelu form at {m.anchor.name!r} not fused"
    if not all(g.private(n.output[0]) for n in m.nodes[1:]):
        return f"{where}: an intermediate has other readers"
    if not g.opset_allows(20):
        return f"{where}: opset {g.opset} < 20 (upgrade_opset=true allows it)"
    if not g.supports("Gelu"):
        return f"{where}: target lacks Gelu"
    return None


def rewrite_gelu(g: FusionGraph, m: Match) -> None:
    g.needed_opset = max(g.needed_opset, 20)
    extra = {"approximate": "tanh"} if m.data.get("approximate") == "tanh" else {}
    node = g.make_node("Gelu", [m["x"]], [m.anchor.output[0]], "gelu_fused", m.anchor.name or m.anchor.output[0],
                       **extra)
    g.insert_before(node, m.anchor)
    g.remove(*m.nodes)


RULES = [
    Rule("hard_activation_fused", ("Div", "Mul"), match_hard, check_hard, rewrite_hard,
         "Clip(x+3,0,6)/6 to HardSigmoid, x*Clip(x+3,0,6)/6 to HardSwish"),
    Rule("hardswish_fused", ("Mul",), match_swish, check_swish, rewrite_swish, "x * HardSigmoid(x) to HardSwish"),
    Rule("gelu_fused", ("Erf",), match_gelu, check_gelu, rewrite_gelu, "erf-form GELU to Gelu (opset 20)"),
    Rule("gelu_fused", ("Tanh",), match_gelu_tanh, check_gelu, rewrite_gelu,
         "tanh-form GELU to Gelu(approximate=tanh) (opset 20)"),
]
