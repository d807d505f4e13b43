"""`facemtl`: one command, subcommands from every package.

The runtime's own subcommands are listed here; `train`, `evaluate`, `convert`, ... register
through the `facemtl.commands` entry-point group, so this module never imports TensorFlow
or the packages that need it. Each registration function adds a subparser and sets
`func(args) -> exit code`; the subcommand's heavy imports happen inside `func`.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

# runtime subcommands: module path -> registration function name
_BUILTIN = (
    ("runtime.commands", "register_predict"),
    ("runtime.commands", "register_calibrate"),
    ("runtime.commands", "register_demo"),
)


class CommandError(Exception):
    """A user mistake with a one-line explanation; printed without a traceback, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facemtl",
        description="Multi-task face analysis: landmarks, gender, smile, glasses and head pose, from training to the edge.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    registrars = []
    for module, name in _BUILTIN:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise  # runtime's own module is there but broken: show the real error
            continue  # the module is not written yet
        registrars.append(getattr(mod, name))
    for ep in sorted(entry_points(group="facemtl.commands"), key=lambda e: e.name):
        try:
            registrars.append(ep.load())
        except ImportError:
            # a package whose extra is not installed (train/ on a Pi): its command is absent
            continue
    for register in registrars:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as e:
        print(f"facemtl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facemtl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m runtime.cli`: run the imported module's main, so that subcommands raising
    # runtime.cli.CommandError are caught by the same class
    from runtime.cli import main as _main

    sys.exit(_main())
