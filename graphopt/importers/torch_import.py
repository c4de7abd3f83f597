"""PyTorch -> ONNX: modules, ExportedProgram files (.pt2) and TorchScript archives (.pt).

Export order: the dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`, built on
torch.export) first; its result is accepted only if it has the requested opset, the
requested input/output names, a symbolic dim on every requested dynamic axis, passes the
full ONNX checker, and reproduces torch's outputs on the example inputs in onnxruntime
(max |onnx - torch| <= 1e-4 max |torch|). Otherwise (it raised, or its opset
down-conversion failed, which happens for opset < 18 with reductions) the TorchScript
exporter (`dynamo=False`) is tried under the same checks; if that fails too, InputError
gives both reasons. A TorchScript archive goes straight to the TorchScript exporter
(torch.export cannot trace it). The default opset is 18, the dynamo exporter's own.

Modules are exported in eval mode (BatchNorm uses running stats, dropout is off) and put
back in their previous mode afterwards. torch is imported lazily: graphopt works without it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import InputError
from graphopt.importers.sources import (ImportedModel, dynamic_axes_from, example_arrays,
                                        parse_input_shapes)
from graphopt.ir import check_model

log = logging.getLogger(__name__)

TORCH_EXTRA = "pip install 'graphopt[torch]'"
# the dynamo exporter's native opset: asking it for less makes it down-convert, which fails
# on reductions (ReduceMean axes) and forces the deprecated TorchScript exporter
DEFAULT_OPSET = 18
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "onnxscript", "onnx_ir")


def require_torch():
    try:
        import torch
    except ImportError as err:
        raise InputError(f"importing PyTorch models needs torch, which is not installed ({TORCH_EXTRA})") from err
    return torch


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and log tracebacks they recover from: keep them at debug."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if chatter.getvalue().strip():
            log.debug("exporter output:\n%s", chatter.getvalue().strip())


def _as_args(example_inputs) -> tuple:
    torch = require_torch()
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict):
        raise InputError("example_inputs must be a tensor or a tuple of tensors (keyword inputs: "
                         "wrap the module so that forward takes them positionally)")
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
                 for a in example_inputs)


def _flat_tensors(value) -> list:
    """Outputs as the exporters see them: the pytree leaves that are tensors, in order."""
    torch = require_torch()
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _forward_names(module, count: int) -> list[str]:
    """Input names from forward's signature (positional parameters), else input_<i>."""
    try:
        forward = module.forward
        if hasattr(forward, "schema"):  # TorchScript method
            params = [a.name for a in forward.schema.arguments][1:]
        else:
            params = [p.name for p in inspect.signature(forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError, AttributeError):
        params = []
    if len(params) >= count:
        return params[:count]
    return [f"input_{i}" for i in range(count)]


def _output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _normalize_axes(dynamic_axes) -> dict[str, dict[int, str]]:
    """Accept torch's two spellings ({name: [axes]} or {name: {axis: dim_name}})."""
    axes = {}
    for name, spec in (dynamic_axes or {}).items():
        if isinstance(spec, dict):
            axes[name] = {int(a): str(d) for a, d in spec.items()}
        else:
            axes[name] = {int(a): f"{name}_dim{a}" for a in spec}
    return axes


def output_batch_axes(outputs, input_axes, args) -> dict[str, dict[int, str]]:
    """Give outputs the input's dynamic axis-0 name where their axis 0 has the traced batch size."""
    batch = {int(a.shape[0]): dims[0] for a, dims in zip(args, input_axes) if dims and 0 in dims
             and getattr(a, "ndim", 0) > 0}
    return {i: {0: batch[int(o.shape[0])]} for i, o in enumerate(outputs)
            if o.ndim > 0 and int(o.shape[0]) in batch}


@contextlib.contextmanager
def _eval_mode(module):
    torch = require_torch()
    if not isinstance(module, torch.nn.Module):
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def import_model(module, example_inputs, input_names=None, output_names=None, dynamic_axes=None,
                 opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export a torch.nn.Module (or ExportedProgram / ScriptModule) to a checked ONNX model."""
    model, _ = export(module, example_inputs, input_names, output_names, dynamic_axes, opset)
    return model


def export(module, example_inputs, input_names=None, output_names=None, dynamic_axes=None,
           opset: int = DEFAULT_OPSET) -> tuple[onnx.ModelProto, str]:
    """Like import_model, also naming the exporter that produced the model."""
    torch = require_torch()
    args = _as_args(example_inputs)
    is_program = isinstance(module, torch.export.ExportedProgram)
    runnable = module.module() if is_program else module
    input_names = list(input_names) if input_names else _forward_names(runnable, len(args))
    if len(input_names) != len(args):
        raise InputError(f"{len(input_names)} input names for {len(args)} example inputs")
    with torch.no_grad(), _eval_mode(module), _quiet():
        outputs = _flat_tensors(runnable(*args))
    output_names = list(output_names) if output_names else _output_names(len(outputs))
    axes = _normalize_axes(dynamic_axes)
    unknown = sorted(set(axes) - set(input_names) - set(output_names))
    if unknown:
        raise InputError(f"dynamic_axes names {unknown} are neither input nor output names")

    reasons = []
    if not isinstance(module, torch.jit.ScriptModule):
        try:
            model = _export_dynamo(module, args, input_names, output_names, axes, opset, is_program)
            problems = (_problems(model, opset, input_names, output_names, axes)
                        or _mismatch(model, input_names, args, outputs))
            if not problems:
                return model, "torch.onnx dynamo"
            reasons.extend(problems)
        except Exception as err:  # the exporter's own errors are many types; fall back on any
            reasons.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        log.info("dynamo exporter not used (%s); falling back to the TorchScript exporter", "; ".join(reasons))
    target = _TraceableProgram(module.module()) if is_program else module
    if is_program and not axes:
        axes = _program_dynamic_axes(module, input_names)
        axes.update({output_names[i]: d for i, d in output_batch_axes(
            outputs, [axes.get(n, {}) for n in input_names], args).items()})
    try:
        model = _export_torchscript(target, args, input_names, output_names, axes, opset)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"cannot export the model to ONNX: {first}"
                         + (f" (dynamo exporter: {reasons[0]})" if reasons else "")) from err
    problems = (_problems(model, opset, input_names, output_names, axes)
                or _mismatch(model, input_names, args, outputs))
    if problems:
        raise InputError(f"cannot export the model to ONNX at opset {opset}: TorchScript exporter: "
                         f"{'; '.join(problems)}" + (f"; dynamo exporter: {'; '.join(reasons)}" if reasons else ""))
    return model, "torch.onnx torchscript"


def _export_dynamo(module, args, input_names, output_names, axes, opset, is_program):
    torch = require_torch()
    kwargs = {} if is_program else {"dynamic_shapes": _dynamic_shapes(module, args, input_names, axes)}
    with torch.no_grad(), _eval_mode(module), _quiet():
        program = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                    opset_version=opset, dynamo=True, verbose=False, **kwargs)
    return program.model_proto


def _dynamic_shapes(module, args, input_names, axes):
    """torch.export dims for the input axes: one Dim per name, shared where names repeat.

    Given as a tuple matching the positional args (torch's own dynamic_axes conversion
    cannot map names onto a `*args` forward).
    """
    torch = require_torch()
    if not any(name in axes for name in input_names):
        return None
    dims = {}
    specs = []
    for name, arg in zip(input_names, args):
        spec = {}
        for axis, dim_name in axes.get(name, {}).items():
            if axis < getattr(arg, "ndim", 0):
                spec[axis] = dims.setdefault(dim_name, torch.export.Dim(_identifier(dim_name)))
        specs.append(spec or None)
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        params = []
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return (tuple(specs),)  # torch.export sees `*args` as one tuple input
    return tuple(specs)


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"d_{cleaned}"


def _export_torchscript(module, args, input_names, output_names, axes, opset):
    torch = require_torch()
    buffer = io.BytesIO()
    with torch.no_grad(), _eval_mode(module), _quiet():
        torch.onnx.export(module, args, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=axes or None, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _problems(model: onnx.ModelProto, opset: int, input_names, output_names, axes) -> list[str]:
    """Why an exported model does not meet the request (empty when it does)."""
    problems = []
    got = {o.domain: o.version for o in model.opset_import}.get("")
    if got != opset:
        problems.append(f"opset {got} instead of {opset}")
    inits = {t.name for t in model.graph.initializer}
    values = {v.name: v for v in list(model.graph.input) + list(model.graph.output) if v.name not in inits}
    graph_inputs = [v.name for v in model.graph.input if v.name not in inits]
    if graph_inputs != list(input_names):
        problems.append(f"inputs {graph_inputs} instead of {list(input_names)}")
    if [v.name for v in model.graph.output] != list(output_names):
        problems.append(f"outputs {[v.name for v in model.graph.output]} instead of {list(output_names)}")
    for name, dims in axes.items():
        value = values.get(name)
        if value is None:
            continue
        shape = value.type.tensor_type.shape.dim
        for axis in dims:
            if axis >= len(shape) or shape[axis].HasField("dim_value"):
                problems.append(f"{name} axis {axis} is not dynamic")
    if not problems:
        try:
            check_model(model, full=True)
        except Exception as err:  # checker and shape-inference errors
            problems.append(f"ONNX checker: {str(err).splitlines()[0]}")
    return problems


def _mismatch(model, input_names, args, outputs) -> list[str]:
    """A candidate must reproduce torch's outputs on the example inputs (see importers.verify)."""
    from graphopt.importers.verify import compare, onnx_outputs

    feeds = {n: a.detach().cpu().numpy() for n, a in zip(input_names, args)}
    try:
        got = onnx_outputs(model, [feeds])
    except Exception as err:  # onnxruntime refuses the model
        return [f"onnxruntime cannot run it: {str(err).splitlines()[0]}"]
    result = compare([[o.detach().cpu().numpy() for o in outputs]], got)
    if result["passed"]:
        return []
    return [result.get("reason") or f"outputs differ from torch (max abs error {result['max_abs_error']:.3g}, "
            f"cosine {result['cosine']:.6f})"]


class _TraceableProgram:
    """Placeholder replaced on first use by a torch.nn.Module subclass (torch is optional)."""

    def __new__(cls, graph_module):
        torch = require_torch()

        class TraceableProgram(torch.nn.Module):
            # ExportedProgram.module() refuses train()/eval(), which the TorchScript exporter
            # calls; the graph is already in inference form, so mode switches are no-ops.
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def train(self, mode=True):
                return self

            def forward(self, *args):
                return self.inner(*args)

        graph_module.requires_grad_(False)
        return TraceableProgram(graph_module)


def _user_input_nodes(program) -> list:
    from torch.export.graph_signature import InputKind

    user = {spec.arg.name for spec in program.graph_signature.input_specs
            if spec.kind == InputKind.USER_INPUT}
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]


def _program_dynamic_axes(program, input_names) -> dict[str, dict[int, str]]:
    """Symbolic dims of the program's user inputs, named after their symbols."""
    axes = {}
    for name, node in zip(input_names, _user_input_nodes(program)):
        value = node.meta.get("val")
        dims = {i: str(d) for i, d in enumerate(getattr(value, "shape", ())) if not isinstance(d, int)}
        if dims:
            axes[name] = dims
    return axes


def _program_example_args(program) -> tuple:
    """The example inputs saved with the program, else zeros of its fake tensors' shapes."""
    torch = require_torch()
    saved = getattr(program, "example_inputs", None)
    if saved is not None:
        args, kwargs = saved
        if kwargs:
            raise InputError("ExportedProgram takes keyword inputs; only positional inputs are supported")
        return tuple(args)
    args = []
    for node in _user_input_nodes(program):
        value = node.meta.get("val")
        if value is None:
            raise InputError(f"ExportedProgram input {node.name!r} has no shape information")
        shape = [d if isinstance(d, int) else (d.node.hint or 2) for d in value.shape]
        args.append(torch.zeros(shape, dtype=value.dtype))
    return tuple(args)


def module_reference(runnable, input_names):
    """A callable running the torch module on ONNX-named numpy feeds."""
    torch = require_torch()

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in input_names]
        with torch.no_grad():
            return [t.detach().cpu().numpy() for t in _flat_tensors(runnable(*tensors))]

    return reference


def import_exported_program(path, opset: int = DEFAULT_OPSET, input_names=None, output_names=None,
                            example_inputs=None) -> ImportedModel:
    torch = require_torch()
    try:
        program = torch.export.load(str(path))
    except Exception as err:
        raise InputError(f"{path}: not a torch.export program saved with torch.export.save "
                         f"({type(err).__name__})") from err
    args = _as_args(example_inputs) if example_inputs is not None else _program_example_args(program)
    input_names = input_names or [n.name for n in _user_input_nodes(program)]
    model, exporter = export(program, args, input_names, output_names, None, opset)
    names = [v.name for v in model.graph.input]
    feeds = {n: a.detach().cpu().numpy() for n, a in zip(names, args)}
    return ImportedModel(model, "pytorch", module_reference(program.module(), names), feeds, exporter)


def import_torchscript(path, input_shapes=None, opset: int = DEFAULT_OPSET, output_names=None,
                       example_inputs=None) -> ImportedModel:
    torch = require_torch()
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated; reading an archive still works
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise InputError(f"{path}: not a TorchScript archive saved with torch.jit.save (a state_dict "
                         "or pickled module needs its Python class: use graphopt.import_model)") from err
    module.eval()
    params = list(module.forward.schema.arguments)[1:]
    names = [a.name for a in params]
    specs = parse_input_shapes(input_shapes) if isinstance(input_shapes, str) else list(input_shapes or [])
    given = _as_args(example_inputs) if example_inputs is not None else None
    count = len(given) if given is not None else len(specs)
    if not count:
        raise InputError(f"{Path(path).name}: TorchScript does not record input shapes; pass "
                         f"--input-shapes {names[0] if names else 'input'}:1x3x224x224 "
                         f"(inputs: {', '.join(names)})")
    if count < len(names) and all(a.default_value is not None for a in params[count:]):
        names = names[:count]  # trailing inputs with defaults keep them
    if given is not None:
        if len(given) != len(names):
            raise InputError(f"{len(given)} example inputs for {len(names)} inputs ({', '.join(names)})")
        args, arrays = given, {n: a.detach().cpu().numpy() for n, a in zip(names, given)}
    else:
        arrays = example_arrays(specs, names)
        args = tuple(torch.from_numpy(arrays[n]) for n in names)
    axes = dynamic_axes_from(specs, [n for n, a in zip(names, args) if a.ndim > 0])
    with torch.no_grad():
        outputs = _flat_tensors(module(*args))
    output_names = list(output_names) if output_names else _output_names(len(outputs))
    for i, dims in output_batch_axes(outputs, [axes.get(n, {}) for n in names], args).items():
        axes[output_names[i]] = dims
    model, exporter = export(module, args, names, output_names, axes, opset)
    return ImportedModel(model, "pytorch", module_reference(module, names), arrays, exporter)
