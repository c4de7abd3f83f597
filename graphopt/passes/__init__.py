"""Pass registry: every module in this package registers its passes on import.

Modules are discovered, not listed, so adding a pass family is adding one module.
"""

from __future__ import annotations

import importlib
import pkgutil

from graphopt.errors import InputError
from graphopt.passes.base import Pass, PassContext, PassResult, describe_options, option

_REGISTRY: dict[str, type[Pass]] = {}
_LOADED = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: add a pass under its `name`; duplicate names are a bug."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def registry() -> dict[str, type[Pass]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    passes = registry()
    if name not in passes:
        raise InputError(f"unknown pass {name!r} (known: {', '.join(passes)})")
    return passes[name]


def create_pass(name: str, options: dict | None = None) -> Pass:
    return get_pass(name)(**(options or {}))


__all__ = ["Pass", "PassContext", "PassResult", "create_pass", "describe_options",
           "get_pass", "option", "register_pass", "registry"]
