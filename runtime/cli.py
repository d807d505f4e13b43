"""`facemtl`: one command, subcommands from every package.

The runtime's own subcommands are listed here; `train`, `evaluate`, `convert`, ... register
through the `facemtl.commands` entry-point group, so this module never imports TensorFlow
or the packages that need it. Each registration function adds a subparser and sets
`func(args) -> exit code`; the subcommand's heavy imports happen inside `func`.

A subcommand that cannot load (its extra is not installed, or its module is broken) stays
listed: running it prints what is missing and how to install it, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import entry_points

from facemtl.runtime.errors import FacemtlError

# runtime subcommands: module path -> registration function name
_BUILTIN = (
    ("facemtl.runtime.commands", "register_predict"),
    ("facemtl.runtime.commands", "register_calibrate"),
    ("facemtl.runtime.commands", "register_demo"),
)

# a missing top-level module -> the install profile (extra) that brings it
_EXTRA_OF = {
    "tensorflow": "train", "keras": "train", "tf2onnx": "train", "onnx": "train", "matplotlib": "train",
    "tqdm": "train", "tensorboard": "train", "onnxruntime": "onnx", "ai_edge_litert": "litert",
    "tflite_runtime": "litert", "skimage": "sample",
}

log = logging.getLogger("facemtl")


class CommandError(FacemtlError):
    """A user mistake with a one-line explanation; printed without a traceback, exit 2."""


def install_hint(error: BaseException) -> str:
    """`error` in one line, with the `pip install` that fixes it where it is a missing module
    of a known install profile."""
    name = getattr(error, "name", None) or ""
    extra = _EXTRA_OF.get(name.split(".")[0])
    text = str(error) or type(error).__name__
    if extra:
        return f"{text}: install it with pip install 'facemtl[{extra}]'"
    return text


def _unavailable(sub, name: str, why: str) -> None:
    """List `name` with the reason it cannot run; running it says so (exit 2)."""
    p = sub.add_parser(name, help=f"(unavailable: {why})", add_help=False)

    def fail(args) -> int:
        raise CommandError(f"this command cannot load: {why}")

    p.set_defaults(func=fail, _unavailable=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facemtl",
        description="Multi-task face analysis: landmarks, gender, smile, glasses and head pose, from training to the edge.",
    )
    from facemtl import __version__

    parser.add_argument("--version", action="version", version=f"facemtl {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--verbose", "-v", action="store_true", help="log what each step does (debug level)")
    verbosity.add_argument("--quiet", "-q", action="store_true", help="errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seen: set[str] = set()
    for module, name in _BUILTIN:
        importlib.import_module(module).__dict__[name](sub)  # runtime's own: a failure here is a real bug
    seen.update(sub.choices)
    for ep in sorted(entry_points(group="facemtl.commands"), key=lambda e: e.name):
        if ep.name in seen:
            continue  # the same distribution seen twice on sys.path
        seen.add(ep.name)
        try:
            register = ep.load()
        except Exception as e:  # noqa: BLE001 - any failure keeps the command listed, with its reason
            _unavailable(sub, ep.name, install_hint(e))
            continue
        register(sub)
    for command in sub.choices.values():  # also after the subcommand: `facemtl predict x.jpg -v`
        for flag, short, text in (("--verbose", "-v", "debug level"), ("--quiet", "-q", "errors only")):
            if flag not in command._option_string_actions:
                names = [flag] + ([short] if short not in command._option_string_actions else [])
                command.add_argument(*names, action="store_true", default=argparse.SUPPRESS, help=f"logging: {text}")
    return parser


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """The CLI's logging: facemtl's messages on stderr, INFO by default."""
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_unavailable", False):
        parser.parse_args(argv)  # the usual "unrecognized arguments" error, exit 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except FacemtlError as e:
        print(f"facemtl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in _EXTRA_OF:
            raise
        print(f"facemtl {args.command}: error: {install_hint(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facemtl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
