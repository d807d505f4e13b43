"""Import TensorFlow without its start-up chatter on stderr.

TensorFlow's C++ side logs through absl before `TF_CPP_MIN_LOG_LEVEL` is read (the CUDA
probe, "All log messages before absl::InitializeLog()..."), so a CLI error that should be
one line arrives under a screenful of notices. Silencing file descriptor 2 for the
duration of the import is the only switch that works; later messages are untouched.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf
