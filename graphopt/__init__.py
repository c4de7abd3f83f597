"""graphopt: an ONNX graph-rewriting compiler with per-target cost models and pass-by-pass verification."""

from graphopt.api import OptimizeResult, cost, optimize, verify
from graphopt.errors import GraphoptError, InputError, PassError, VerificationFailed

__version__ = "0.1.0"


def import_model(*args, **kwargs):
    """Export a PyTorch module to ONNX (see graphopt.importers.import_model)."""
    from graphopt.importers import import_model as _import_model

    return _import_model(*args, **kwargs)


__all__ = ["GraphoptError", "InputError", "OptimizeResult", "PassError", "VerificationFailed",
           "__version__", "cost", "import_model", "optimize", "verify"]
