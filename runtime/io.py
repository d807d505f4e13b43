"""Atomic file writes: a crash or a failed check never leaves a half-written file behind.

The file appears with the permissions any other new file of this process would get (0666
less the umask), or keeps those of the file it replaces: a temporary file is created 0600,
and without this every recording, summary, `spec.json` and model would be unreadable to
the other users of the machine (a systemd service user, a web server).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from facemtl.runtime.errors import OutputError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def current_umask() -> int:
    """This process's umask, read without changing it where Linux tells it (/proc), since
    `os.umask` can only be read by setting it, which races with other threads' file creation."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | os.PathLike) -> int:
    """The mode a file written at `path` should have: that of the file it replaces, else
    0666 less the umask (what `open(path, "w")` would give)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it over `path` only if the block succeeds.

    The temporary name keeps the final suffix (writers such as Keras and OpenCV pick the
    format from it) and lives in the same folder, so the final `os.replace` is atomic.
    A folder that cannot be written is an OutputError naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix if suffix is not None else path.suffix,
                                   dir=path.parent)
    except OSError as e:
        raise OutputError(str(path), e) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically; OutputError (naming the path) if it cannot be."""
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(str(path), e) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def quiet_closed_stdout() -> None:
    """After a reader of stdout went away (`facemtl predict ... | head -1`): point stdout at
    /dev/null, so the interpreter's own flush at exit does not print a BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by something without a descriptor
        pass
