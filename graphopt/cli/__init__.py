"""`graphopt` command line: argument parsing only; every command calls the Python API.

Each module in this package that defines COMMAND, HELP, configure(parser) and run(args)
is a subcommand. Errors map to exit codes: 1 bad input (one line, no traceback),
2 verification or budget not met, 3 internal error (traceback with --debug).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from graphopt.errors import GraphoptError, InputError


def _commands() -> dict:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "COMMAND"):
            found[module.COMMAND] = module
    return found


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 1
        raise InputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphopt", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"graphopt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _commands().items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from graphopt import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="graphopt: %(levelname)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "_run", None):
            build_parser().print_help()
            return 1
        return int(args._run(args) or 0)
    except GraphoptError as err:
        if debug and err.exit_code == 3:
            raise
        print(f"graphopt: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: exit 3, traceback only with --debug
        if debug:
            raise
        print(f"graphopt: internal error: {type(err).__name__}: {err} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 3


def show_progress() -> bool:
    """Progress bars on terminals only; CI logs stay quiet."""
    import os

    return sys.stderr.isatty() and not os.environ.get("CI")
