"""Which video container keeps its frames when the writer is killed?

    python bench/record_kill.py              # 300 frames, then SIGKILL
    python bench/record_kill.py --frames 900

For each container and codec, a child process writes 640x480 frames through OpenCV's
`VideoWriter` (textured, numbered frames, as fast as it can) and reports each frame written;
after `--frames` of them it gets SIGKILL, and `cv2.VideoCapture` counts the frames it can
read back from what is left. This chose `--record`'s advice (docs/live.md, "Recordings that
survive a kill"): the file a killed process leaves is all that survives.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import os, sys, cv2, numpy as np
path, fourcc = sys.argv[1], sys.argv[2]
w = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), 30.0, (640, 480))
if not w.isOpened():
    print("unopened", flush=True); sys.exit(3)
base = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
for i in range(1_000_000):
    f = base.copy()
    cv2.putText(f, str(i), (50, 200), cv2.FONT_HERSHEY_SIMPLEX, 4, (255, 255, 255), 8)
    w.write(f)
    print(i + 1, flush=True)
"""

CASES = [
    ("avi", "MJPG", None),
    ("mkv", "MJPG", None),
    ("mp4", "mp4v", None),
    ("mkv", "mp4v", None),
    ("ts", "mp4v", None),
    ("mp4", "mp4v", "movflags;frag_keyframe+empty_moov"),
]


def readable(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300, help="frames written before SIGKILL (default 300)")
    args = ap.parse_args(argv)
    print(f"{'container':10s} {'codec':6s} {'writer options':36s} {'written':>8s} {'readable':>9s} {'MB':>7s}")
    with tempfile.TemporaryDirectory() as d:
        for suffix, fourcc, options in CASES:
            path = Path(d) / f"kill_{fourcc}{'_opt' if options else ''}.{suffix}"
            env = dict(os.environ)
            if options:
                env["OPENCV_FFMPEG_WRITER_OPTIONS"] = options
            p = subprocess.Popen([sys.executable, "-c", CHILD, str(path), fourcc], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env)
            n = 0
            for line in p.stdout:
                if not line.strip().isdigit():
                    break
                n = int(line)
                if n >= args.frames:
                    p.send_signal(signal.SIGKILL)
                    break
            p.wait()
            size = path.stat().st_size / 1e6 if path.exists() else 0.0
            print(f".{suffix:9s} {fourcc:6s} {options or '-':36s} {n:8d} {readable(path) if path.exists() else 0:9d} "
                  f"{size:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
