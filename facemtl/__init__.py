"""facemtl: multi-task face analysis for the edge.

One small CNN looks at a 40x40 grey face crop and answers five questions at once: the five
landmarks, gender, smile, glasses and head pose.

    import cv2, facemtl

    with facemtl.FaceAnalyzer.create_from_options(facemtl.FaceAnalyzerOptions()) as analyzer:
        for face in analyzer.analyze(cv2.imread("group.jpg")).faces:
            face.landmarks                          # (5, 2) image pixels, face.landmark_names order
            face.attributes["smile"].top            # Category(index, score, display_name, category_name)

The public names below import on first use, so `import facemtl` stays cheap and never
imports TensorFlow; training and conversion live in `facemtl.train` and `facemtl.convert`.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS = {
    "FaceAnalyzer": "facemtl.runtime.analyzer",
    "FaceAnalyzerOptions": "facemtl.runtime.analyzer",
    "RunningMode": "facemtl.runtime.analyzer",
    "TrackingOptions": "facemtl.runtime.live.tracking",
    "Category": "facemtl.runtime.results",
    "Classification": "facemtl.runtime.results",
    "Face": "facemtl.runtime.results",
    "FrameResult": "facemtl.runtime.results",
    "read_image": "facemtl.runtime.images",
    "ModelSpec": "facemtl.runtime.spec",
    "HeadSpec": "facemtl.runtime.spec",
    "FacemtlError": "facemtl.runtime.errors",
    "SpecError": "facemtl.runtime.errors",
    "ModelFileError": "facemtl.runtime.errors",
    "ImageError": "facemtl.runtime.errors",
    "DetectorError": "facemtl.runtime.errors",
    "AnnotationError": "facemtl.runtime.errors",
    "DataError": "facemtl.runtime.errors",
    "CalibrationError": "facemtl.runtime.errors",
    "SourceError": "facemtl.runtime.errors",
    "RecordError": "facemtl.runtime.errors",
    "ConcurrentUseError": "facemtl.runtime.errors",
    "OutputError": "facemtl.runtime.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facemtl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
