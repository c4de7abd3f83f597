"""onnxruntime contrib kernels (com.microsoft), only for targets that opt in.

Conv + activation to FusedConv; GELU forms (graphopt/fusion/activations.py matches them)
to Gelu / FastGelu where the model's opset has no standard Gelu (opset < 20).

onnxruntime's contrib op FusedConv(X, W, B; activation, activation_params) computes
act(Conv(X, W, B)) in one kernel. It is not a standard op, so the rule runs only when the
selected target lists "com.microsoft" in `contrib_domains`; the pass then adds that
domain to the model's opset imports. Activations: Relu, Sigmoid, Tanh, LeakyRelu(alpha),
Clip(min, max) with constant bounds, HardSigmoid(alpha, beta).
"""

from __future__ import annotations

from graphopt.fusion.activations import match_gelu, match_gelu_tanh
from graphopt.fusion.graph import FusionGraph, attr, scalar
from graphopt.fusion.rule import Match, Rule

DOMAIN = "com.microsoft"
ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSigmoid")


def _target_allows(g: FusionGraph) -> bool:
    return g.target is not None and DOMAIN in tuple(getattr(g.target, "contrib_domains", ()))


def match_fused_conv(g: FusionGraph, act) -> Match | None:
    if not _target_allows(g) or not act.input:
        return None
    conv = g.producer(act.input[0], "Conv")
    return None if conv is None else Match([act, conv])


def _params(g: FusionGraph, act) -> list[float] | None:
    if act.op_type == "LeakyRelu":
        return [float(attr(act, "alpha", 0.01))]
    if act.op_type == "HardSigmoid":
        return [float(attr(act, "alpha", 0.2)), float(attr(act, "beta", 0.5))]
    if act.op_type != "Clip":
        return []
    if len(act.input) == 1:
        return [float(attr(act, "min", -3.4028234663852886e38)), float(attr(act, "max", 3.4028234663852886e38))]
    lo = scalar(g.value(act.input[1])) if len(act.input) > 1 and act.input[1] else -3.4028234663852886e38
    hi = scalar(g.value(act.input[2])) if len(act.input) > 2 and act.input[2] else 3.4028234663852886e38
    return None if lo is None or hi is None else [lo, hi]


def check_fused_conv(g: FusionGraph, m: Match) -> str | None:
    act, conv = m.nodes
    where = f"{conv.name!r} + {act.op_type} not fused to FusedConv"
    if not g.private(conv.output[0]):
        return f"{where}: Conv output has other readers"
    if g.dtype(conv.input[0]) != 1:
        return f"{where}: FusedConv runs float32 only"
    params = _params(g, act)
    if params is None:
        return f"{where}: Clip bounds are not constant"
    m.data["params"] = params
    return None


def rewrite_fused_conv(g: FusionGraph, m: Match) -> None:
    act, conv = m.nodes
    attrs = {a.name: a for a in conv.attribute}
    node = g.make_node("FusedConv", list(conv.input), [act.output[0]], "conv_activation_fused",
                       conv.name or act.name, domain=DOMAIN, activation=act.op_type)
    node.attribute.extend(attrs.values())
    if m["params"]:
        node.attribute.append(__import__("onnx").helper.make_attribute("activation_params", m["params"]))
    g.used_domains.add(DOMAIN)
    g.insert_before(node, conv)
    g.remove(act, conv)


def _gelu_matcher(match):
    """`match` restricted to targets with contrib kernels and opsets without a standard Gelu."""
    def contrib_match(g: FusionGraph, node) -> Match | None:
        return match(g, node) if _target_allows(g) and not g.opset_allows(20) else None
    return contrib_match


def check_gelu_contrib(g: FusionGraph, m: Match) -> str | None:
    where = f"Gelu form at {m.anchor.name!r} not fused to com.microsoft Gelu"
    if not all(g.private(n.output[0]) for n in m.nodes[1:]):
        return f"{where}: an intermediate has other readers"
    if g.dtype(m["x"]) != 1:
        return f"{where}: contrib Gelu runs float32 only"
    return None


def rewrite_gelu_contrib(g: FusionGraph, m: Match) -> None:
    op = "FastGelu" if m.data.get("approximate") == "tanh" else "Gelu"
    node = g.make_node(op, [m["x"]], [m.anchor.output[0]], "gelu_fused", m.anchor.name or m.anchor.output[0],
                       domain=DOMAIN)
    g.used_domains.add(DOMAIN)
    g.insert_before(node, m.anchor)
    g.remove(*m.nodes)


RULES = [Rule("conv_activation_fused", ACTIVATIONS, match_fused_conv, check_fused_conv, rewrite_fused_conv,
              "Conv + activation to com.microsoft FusedConv (targets with that contrib domain)"),
         Rule("gelu_fused", ("Erf",), _gelu_matcher(match_gelu), check_gelu_contrib, rewrite_gelu_contrib,
              "erf-form GELU to com.microsoft Gelu below opset 20 (targets with that contrib domain)"),
         Rule("gelu_fused", ("Tanh",), _gelu_matcher(match_gelu_tanh), check_gelu_contrib, rewrite_gelu_contrib,
              "tanh-form GELU to com.microsoft FastGelu below opset 20 (targets with that contrib domain)")]
