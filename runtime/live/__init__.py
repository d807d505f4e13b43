"""Live video: sources (cameras, files, the sample stream), tracking and smoothing for the
analyzer's VIDEO mode, the overlay, MJPEG serving, recording, `facemtl demo` and
`facemtl bench --live`. numpy, OpenCV and the standard library; never TensorFlow.

Modules import lazily: `from facemtl.runtime.live.tracking import FaceTracker`, etc.
"""
