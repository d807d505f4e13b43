"""One error hierarchy for the whole package: catch `FacemtlError` for any of them.

Each failure kind has one class, defined here and re-exported by `facemtl` (and by the
module that raises it, where older code imports it from). Every message is one line that
names the file, line or frame at fault and, where there is one, the fix.
"""

from __future__ import annotations


class FacemtlError(Exception):
    """Base class of every error facemtl raises on purpose."""


class SpecError(FacemtlError, ValueError):
    """A spec that cannot describe a working model (bad JSON, unknown head, wrong shape)."""


class ModelFileError(FacemtlError, ValueError):
    """A model file that cannot be used: missing, corrupt, of the wrong kind, or without a spec."""


class ImageError(FacemtlError, ValueError):
    """An image or frame this code cannot use (wrong shape, wrong dtype, empty, undecodable)."""


class DetectorError(FacemtlError, ValueError):
    """A detector that cannot be built (unknown name, missing file, OpenCV without it)."""


class AnnotationError(FacemtlError, ValueError):
    """A malformed annotation line; the message names file and line."""


class DataError(FacemtlError, ValueError):
    """A data folder that cannot be used (missing files, unreadable images)."""


class CalibrationError(FacemtlError, ValueError):
    """Too few matches to fit a calibration, or unusable inputs."""


class SourceError(FacemtlError, RuntimeError):
    """A video source that cannot be opened, or a camera that went away; the message says why."""


class RecordError(FacemtlError, RuntimeError):
    """A video file that cannot be written (unknown suffix, no codec, folder missing)."""


class OutputError(FacemtlError, OSError):
    """An output that cannot be written: a path that cannot be created, a full disk, a closed
    pipe. `closed_stdout` is true for a reader of stdout that went away (`... | head -1`),
    which the CLI ends quietly."""

    def __init__(self, name: str, error: OSError | str):
        reason = error if isinstance(error, str) else (error.strerror or str(error) or type(error).__name__)
        super().__init__(f"cannot write {name}: {reason}")
        self.name = name
        self.closed_stdout = isinstance(error, BrokenPipeError) and name == "stdout"


class ConcurrentUseError(FacemtlError, RuntimeError):
    """One FaceAnalyzer called from two threads at once; each thread needs its own."""


class SampleUnavailable(SourceError):
    """scikit-image (which ships the sample face) is not installed."""


__all__ = ["FacemtlError", "SpecError", "ModelFileError", "ImageError", "DetectorError", "AnnotationError",
           "DataError", "CalibrationError", "SourceError", "RecordError", "OutputError", "ConcurrentUseError", "SampleUnavailable"]
