"""runtime/ must import and build its commands with TensorFlow and Keras unimportable."""

from __future__ import annotations

import textwrap

from import_blocker import run_blocked


def test_blocker_really_blocks(tmp_path):
    r = run_blocked("import tensorflow", tmp_path)
    assert r.returncode != 0 and "blocked for this test" in r.stderr


def test_runtime_imports_without_tensorflow(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        import facemtl, facemtl.runtime.analyzer, facemtl.runtime.detectors, facemtl.runtime.commands, facemtl.runtime.calibration
        import facemtl.runtime.cli, facemtl.runtime.results, facemtl.runtime.preprocess, facemtl.runtime.spec
        parser = facemtl.runtime.cli.build_parser()
        names = set(parser._subparsers._group_actions[0].choices)
        assert {"predict", "calibrate", "demo"} <= names, names
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")
                     or m.startswith(("facemtl.train", "facemtl.convert")))
        assert not bad, bad
        print("ok")
        """
    )
    r = run_blocked(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_predict_help_runs_without_tensorflow(tmp_path):
    r = run_blocked("import sys, facemtl.runtime.cli; sys.exit(facemtl.runtime.cli.main(['predict', '--help']))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--detector" in r.stdout and "yunet:PATH" in r.stdout
