"""The seeded fuzzer of bench/fuzz.py at a small count: mutated MTFL faces (JPEG and PNG)
through `facemtl predict`, mutated packaged model files through `predict --model`. No
traceback, crash or hang; every unmutated image's line is the clean run's. The large run
(`python bench/fuzz.py --images 1000 --models 200 --seed 0`) is in docs/runtime.md."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_fuzzed_images_and_models_give_errors_never_tracebacks_crashes_or_hangs(mtfl_dir, tmp_path):
    report = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--images", "120", "--models", "40",
                        "--seed", "7", "--data", str(mtfl_dir), "--chunk", "60", "--timeout", "120",
                        "--json", str(report)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    counts = json.loads(report.read_text())
    images, models = counts["images"], counts["models"]
    for c in (images, models):
        assert c["tracebacks"] == c["crashes"] == c["hangs"] == 0 and not c["failures"]
    assert images["runs"] == 2 and images["good_checked"] == 12 and images["good_differ"] == 0
    assert images["missing_lines"] == 0 and images["mutant_errors"] + images["mutant_results"] == 120
    assert images["mutant_errors"] > 0 and images["kinds"].get("huge-jpeg", 0) + images["kinds"].get("huge-png", 0) > 0
    assert models["refused"] + models["ran"] == 40 and models["refused"] > 0 and models["multi_line"] == 0
