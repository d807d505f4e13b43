"""`facemtl bench --live`: the hook `convert/cli.py` calls; the work is in runtime/live/bench.py."""

from facemtl.runtime.live.bench import add_arguments, main

__all__ = ["add_arguments", "main"]
