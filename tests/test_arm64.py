"""The Raspberry Pi profile on the real ARM instruction set: Debian bookworm arm64 (Python
3.11, as 64-bit Raspberry Pi OS) under QEMU user-mode emulation of a Pi 4's Cortex-A72,
installed step for step as docs/live.md's Raspberry Pi section says, once per interpreter
(LiteRT, tflite-runtime). Inside: `facemtl predict` on 50 MTFL images, the sample demo for
100 frames with `--json`, and the packaged model on the validation crops. The same
interpreter on x86 (a venv with the versions the guest installed) gives the reference.

Runs only when selected: `python -m pytest -m arm64` (.ci/run's second step). The root file
system comes from deploy/arm64/pi_rootfs.py's cache (built on first use: about 10 minutes).
A machine that cannot do it (no root, no binfmt_misc, Debian's archive or PyPI unreachable)
skips with the reason; a difference from x86 fails.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

import numpy as np
import pytest

from runtime_models import ROOT
from venvs import UNREACHABLE

pytestmark = pytest.mark.arm64

PROFILES = ("litert", "tflite-runtime")
FRAMES = 50
DEMO_FRAMES = 100
PACKAGED = ROOT / "runtime" / "models" / "facemtl_int8.tflite"
# decimals `facemtl predict` prints per field (runtime/results.py): a value within 1e-4 may
# still print one step apart when it sits on a rounding boundary
PRINT_STEP = {"box": 0.1, "square": 0.1, "landmarks": 0.01, "score": 1e-4, "attributes": 1e-4}


def _load_script():
    path = ROOT / "deploy" / "arm64" / "pi_rootfs.py"
    spec = importlib.util.spec_from_file_location("pi_rootfs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pi_rootfs"] = module
    spec.loader.exec_module(module)
    return module


pi_rootfs = _load_script()


def _unreachable(url: str) -> str | None:
    try:
        urllib.request.urlopen(url, timeout=30).close()
    except (urllib.error.URLError, OSError) as e:
        return f"{url} is unreachable ({e})"
    return None


# --- docs/live.md, the steps the guest runs -------------------------------------------------------

def pi_steps() -> list[str]:
    """The command lines of docs/live.md's Raspberry Pi install block, commented
    alternatives (the second interpreter) uncommented."""
    text = (ROOT / "docs" / "live.md").read_text()
    section = text[text.index("## Raspberry Pi"):]
    block = next(b for b in re.findall(r"```\n(.*?)```", section, re.S) if "python3 -m venv" in b)
    lines = []
    for line in block.splitlines():
        line = re.sub(r"^# (?=~/facemtl-venv/bin/pip)", "", line.strip())
        line = re.sub(r"\s+# .*$", "", line)
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def install_steps(profile: str) -> list[str]:
    """The venv, pip and apt lines for one interpreter profile, in order."""
    steps = pi_steps()
    pip_lines = [s for s in steps if s.startswith("~/facemtl-venv/bin/pip install") and "'facemtl" in s]
    chosen = [s for s in pip_lines if ("tflite-runtime" in s) == (profile == "tflite-runtime")]
    assert len(chosen) == 1, f"docs/live.md should have one pip line for {profile}: {pip_lines}"
    other = [s for s in steps if s.startswith(("python3 -m venv", "~/facemtl-venv/bin/pip install --upgrade"))]
    return other + chosen


def test_docs_apt_packages_are_the_root_file_system_packages():
    """The root file system holds what the docs have a Pi install with apt (less picamera2,
    from Raspberry Pi OS's own archive), so a package missing from the docs fails here."""
    apt = [s for s in pi_steps() if s.startswith("sudo apt install")]
    named = {p for s in apt for p in s.split()[3:] if not p.startswith("-")} - {"python3-picamera2"}
    assert named and named <= set(pi_rootfs.PACKAGES), (named, pi_rootfs.PACKAGES)
    assert set(pi_rootfs.PACKAGES) - named <= {"python3", "ca-certificates"}  # in Raspberry Pi OS already
    for profile in PROFILES:
        steps = install_steps(profile)
        assert steps[0] == "python3 -m venv --system-site-packages ~/facemtl-venv"
        assert steps[1] == "~/facemtl-venv/bin/pip install --upgrade pip"


# --- the runs -----------------------------------------------------------------------------------

def _selected(config) -> bool:
    return "arm64" in (config.getoption("markexpr") or "")


@pytest.fixture(scope="module")
def host(request, tmp_path_factory) -> dict:
    """Inputs shared by both profiles: the wheel, 50 frames, the validation crops."""
    if not _selected(request.config):
        pytest.skip("the arm64 job runs only when selected: python -m pytest -m arm64 (.ci/run's second step)")
    problem = pi_rootfs.host_problem()
    if problem:
        pytest.skip(f"this machine cannot run the arm64 root file system: {problem}")
    if not pi_rootfs.tarball().is_file():
        problem = _unreachable(f"{pi_rootfs.MIRROR}/dists/{pi_rootfs.SUITE}/Release")
        if problem:
            pytest.skip(f"no cached root file system and Debian's archive: {problem}")
    problem = _unreachable("https://pypi.org/simple/tflite-runtime/")
    if problem:
        pytest.skip(f"the guest installs from PyPI: {problem}")
    from conftest import MTFL

    if not (MTFL / "training.txt").is_file():
        pytest.skip(f"MTFL data set not found at {MTFL}")

    from facemtl.convert.data import held_out
    from facemtl.runtime.artifact import read_spec
    from facemtl.runtime.calibration import read_landmark_file, spread_subset

    work = tmp_path_factory.mktemp("arm64")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(work / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (work / "dist").glob("facemtl-*.whl")
    paths, _ = read_landmark_file(MTFL / "training.txt", MTFL)
    frames = [paths[i] for i in spread_subset(len(paths), FRAMES)]
    spec = read_spec(PACKAGED)
    crops = held_out(MTFL, spec, "validation")
    np.save(work / "crops.npy", crops.x)
    return {"work": work, "wheel": wheel, "frames": frames, "crops": crops, "spec": spec}


def _guest_script(profile: str, wheel: str, frames: list[str]) -> str:
    """docs/live.md's steps for `profile` (the wheel for `facemtl`), then the three runs; each
    step's seconds go to times.txt."""
    venv_dir = f"/root/venv-{profile}"
    out = f"/work/{profile}"
    steps = [s.replace("~/facemtl-venv", venv_dir).replace("'facemtl[", f"'{wheel}[")
             for s in install_steps(profile)]
    # --no-compile: pip byte-compiles every file it installs (scipy's thousands), minutes under
    # emulation; Python compiles what is imported anyway
    steps = [s + " -q --progress-bar off --no-compile" if "/bin/pip install" in s else s for s in steps]
    py, cli = f"{venv_dir}/bin/python", f"{venv_dir}/bin/facemtl"
    probe = ("import importlib.util as u, json, platform, numpy, cv2, facemtl.runtime as r, os\n"
             "print(json.dumps({m: u.find_spec(m) is not None for m in ['tensorflow', 'keras', 'ai_edge_litert',"
             " 'tflite_runtime', 'onnxruntime']} | {'machine': platform.machine(), 'python': platform.python_version(),"
             " 'numpy': numpy.__version__, 'cv2': cv2.__version__,"
             " 'model': os.path.join(os.path.dirname(r.__file__), 'models', 'facemtl_int8.tflite')}))")
    runs = [
        f"{py} -m pip freeze --local > {out}/freeze.txt",
        f"{py} -c {shlex.quote(probe)} > {out}/probe.json",
        f"{cli} predict {' '.join(shlex.quote(f) for f in frames)} --out {out}/predict.jsonl",
        f"{py} -m facemtl.convert.interpreters \"$({py} -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"model\"])'"
        f" {out}/probe.json)\" /work/crops.npy {out}/crops.npz --interpreter {profile}",
        f"{cli} demo --source sample --max-frames {DEMO_FRAMES} --pace off --quiet --json {out}/demo.jsonl "
        f"--summary {out}/summary.json",
    ]
    names = ["venv", "pip upgrade", "pip install", "freeze", "probe", "predict", "crops", "demo"]
    lines = ["set -e", f"mkdir -p {out}", "cd /work", "t0=$(date +%s.%N)"]
    for name, step in zip(names, steps + runs):
        lines += [step, f"t1=$(date +%s.%N); echo \"{name} $(echo \"$t1 - $t0\" | awk '{{print $1 - $3}}')\""
                        f" >> {out}/times.txt; t0=$t1"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def arm64(host) -> dict:
    """Each profile's results from the emulated Pi: host copies of /work/<profile>/."""
    fs_timing = {}
    t = time.perf_counter()
    with pi_rootfs.Rootfs.open() as fs:
        fs_timing.update(fs.seconds)
        wheel = fs.copy_in(host["wheel"], "/tmp/")
        frames = [fs.copy_in(f, f"/work/frames/{i:02d}_{Path(f).name}") for i, f in enumerate(host["frames"])]
        fs.copy_in(host["work"] / "crops.npy", "/work/")
        # the two profiles side by side: each is one emulated process at a time, and CI has two cores
        procs = {p: fs.start(_guest_script(p, wheel, frames)) for p in PROFILES}
        results, failed = {}, []
        try:
            for profile, proc in procs.items():
                try:
                    stdout, stderr = proc.communicate(timeout=2400)
                except subprocess.TimeoutExpired:
                    fs.stop(proc)
                    stdout, stderr = "", "timed out after 2400 s"
                out = host["work"] / f"arm64-{profile}"
                if fs.path(f"/work/{profile}").is_dir():
                    shutil.copytree(fs.path(f"/work/{profile}"), out)
                results[profile] = out
                if proc.returncode != 0:
                    failed.append((profile, proc.returncode, stdout + stderr))
        finally:  # nothing may outlive the root file system it runs in
            for proc in procs.values():
                fs.stop(proc)
    for profile, code, text in failed:
        if any(s in text for s in UNREACHABLE):
            pytest.skip(f"the guest could not reach PyPI: {text.strip().splitlines()[-1]}")
    if failed:
        pytest.fail("\n".join(f"the {p} profile failed on arm64 (exit {c}):\n{t[-4000:]}" for p, c, t in failed))
    fs_timing["total"] = time.perf_counter() - t
    return {"dirs": results, "frames": frames, "timing": fs_timing}


def _x86_venv(root: Path, freeze: Path, wheel: Path) -> Path:
    """A venv on this machine with exactly the packages the guest installed."""
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    pins = [ln for ln in freeze.read_text().splitlines() if ln and not ln.startswith("facemtl")]
    r = subprocess.run([root / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--progress-bar", "off", "--no-deps", wheel, *pins], capture_output=True, text=True, timeout=1500)
    if r.returncode != 0 and any(s in r.stdout + r.stderr for s in UNREACHABLE):
        pytest.skip("the package index is unreachable: " + (r.stdout + r.stderr).strip().splitlines()[-1])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return root / "bin" / "python"


@pytest.fixture(scope="module")
def x86(host, arm64) -> dict:
    """The same runs on this machine, per profile, with the guest's package versions."""
    out = {}
    for profile in PROFILES:
        d = host["work"] / f"x86-{profile}"
        d.mkdir()
        py = _x86_venv(host["work"] / f"venv-{profile}", arm64["dirs"][profile] / "freeze.txt", host["wheel"])
        # cwd: not the checkout, whose facemtl/ folder would shadow the installed package
        r = subprocess.run([py.parent / "facemtl", "predict", *map(str, host["frames"]), "--out", d / "predict.jsonl"],
                           capture_output=True, text=True, timeout=900, cwd=d)
        assert r.returncode == 0, r.stderr[-3000:]
        r = subprocess.run([py, "-m", "facemtl.convert.interpreters", PACKAGED, host["work"] / "crops.npy",
                            d / "crops.npz", "--interpreter", profile], capture_output=True, text=True, timeout=900,
                           cwd=d)
        assert r.returncode == 0, r.stderr[-3000:]
        out[profile] = d
    return out


def _outputs(path: Path):
    from facemtl.convert.interpreters import read_outputs

    return read_outputs(path)


# --- the floors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES)
def test_guest_is_arm64_with_only_its_interpreter(arm64, profile):
    info = json.loads((arm64["dirs"][profile] / "probe.json").read_text())
    assert info["machine"] == "aarch64" and info["python"].startswith("3.11."), info
    assert not info["tensorflow"] and not info["keras"] and not info["onnxruntime"], info
    assert info["ai_edge_litert"] == (profile == "litert"), info
    assert info["tflite_runtime"] == (profile == "tflite-runtime"), info
    if profile == "tflite-runtime":  # the docs' pins: numpy 1 and an OpenCV built for it
        assert info["numpy"].startswith("1.") and info["cv2"].startswith("4."), info


def _number_diffs(a, b, key: str = "") -> list[tuple[str, float]]:
    """(field, |a - b|) for every number of two predict records of the same shape."""
    if isinstance(a, dict):
        assert set(a) == set(b), (key, sorted(a), sorted(b))
        # a number is named by its face-level field (box, landmarks, attributes, ...)
        return [d for k in a for d in _number_diffs(a[k], b[k], k if key in ("", "faces") else key)]
    if isinstance(a, list):
        assert len(a) == len(b), (key, a, b)
        return [d for x, y in zip(a, b) for d in _number_diffs(x, y, key)]
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return [(key, abs(float(a) - float(b)))]
    assert a == b, (key, a, b)
    return []


# Measured (docs/live.md, "Raspberry Pi"): the 1e-4 floor is not met, for a reason of each profile's
# own, on the arm64 wheels, not in facemtl. strict: a run that meets it fails, so the mark goes.
NOT_EQUAL = {
    "litert": "LiteRT agrees on arm64 to 6e-6 (the crops test), not bit for bit, and OpenCV 5.1's aarch64 "
              "kernels cut 3 of 58 crops one grey level apart from x86; with OpenCV 4.x on both (run 58) "
              "predict still differs, most likely by the 6e-6 moving a later pass's crop; two passes plus "
              "flip averaging and the refinement stages carry that to every face (landmarks up to 2.0% of "
              "the inter-ocular distance, one gender label of 232 flipped)",
    "tflite-runtime": "OpenCV 4.11's crops are identical on arm64, but tflite-runtime 2.14's aarch64 kernels "
                      "give other raw outputs on the same crops (up to 0.0094 on landmarks): 15 of 50 "
                      "frames differ, landmarks up to 2.3% of the inter-ocular distance, no label flipped",
}


def _predict_pairs(arm64, x86, profile):
    guest = [json.loads(x) for x in (arm64["dirs"][profile] / "predict.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (x86[profile] / "predict.jsonl").read_text().splitlines()]
    assert len(guest) == len(ref) == FRAMES
    assert sum(bool(x["faces"]) for x in ref) >= 0.9 * FRAMES  # real faces found, not 50 empty lists
    for g, r in zip(guest, ref):
        assert Path(g["image"]).name.split("_", 1)[1] == Path(r["image"]).name, (g["image"], r["image"])
        assert len(g["faces"]) == len(r["faces"]), (r["image"], len(g["faces"]), len(r["faces"]))
    return [(g, r) for g, r in zip(guest, ref)]


def _not_equal(profile: str):
    return pytest.param(profile, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=NOT_EQUAL[profile]))


@pytest.mark.parametrize("profile", [_not_equal(p) for p in PROFILES])
def test_predict_on_arm64_equals_x86_with_the_same_interpreter(arm64, x86, profile):
    """The issue's floor: `facemtl predict` on 50 frames, arm64 against x86, the same
    interpreter and package versions, every number within 1e-4."""
    worst = {}
    for g, r in _predict_pairs(arm64, x86, profile):
        g, r = {k: v for k, v in g.items() if k != "image"}, {k: v for k, v in r.items() if k != "image"}
        for key, d in _number_diffs(g, r):
            worst[key] = max(worst.get(key, 0.0), d)
    # 1e-4, or one step of the printed rounding where a value sat on its boundary
    over = {k: d for k, d in worst.items() if d > max(1e-4, PRINT_STEP.get(k, 1e-4)) + 1e-9}
    assert not over, f"arm64 {profile} differs from x86: {over} (all fields: {worst})"


@pytest.mark.parametrize("profile", PROFILES)
def test_predict_on_arm64_is_close_to_x86_with_the_same_interpreter(arm64, x86, profile):
    """What holds while the floor above does not: the same faces in the same boxes, each
    landmark within 5% of the inter-ocular distance of x86's (measured: 2.3% at most), 98% of
    the class answers the same (measured: 231 or 232 of 232)."""
    worst_point, same, total = 0.0, 0, 0
    for g, r in _predict_pairs(arm64, x86, profile):
        for fg, fr in zip(g["faces"], r["faces"]):
            assert np.abs(np.subtract(fg["box"], fr["box"])).max() <= 1.0, (r["image"], fg["box"], fr["box"])
            lg, lr = np.array(fg["landmarks"]), np.array(fr["landmarks"])
            iod = np.linalg.norm(lr[1] - lr[0])
            worst_point = max(worst_point, float(np.linalg.norm(lg - lr, axis=1).max() / iod))
            for head, answer in fr["attributes"].items():
                total += 1
                same += fg["attributes"][head]["label"] == answer["label"]
    assert worst_point <= 0.05, f"a landmark {worst_point:.1%} of the inter-ocular distance from x86's"
    assert same >= 0.98 * total, f"{same} of {total} class answers as on x86"


@pytest.mark.parametrize("profile", ["litert", _not_equal("tflite-runtime")])
def test_crops_on_arm64_equal_x86_with_the_same_interpreter(arm64, x86, profile):
    """The interpreter alone: the packaged file on the same 1016 validation crops."""
    guest, ref = _outputs(arm64["dirs"][profile] / "crops.npz"), _outputs(x86[profile] / "crops.npz")
    assert guest.machine == "aarch64" and ref.machine == "x86_64"
    assert guest.interpreter == ref.interpreter == profile and guest.version == ref.version
    for name, y in ref.outputs.items():
        assert guest.outputs[name].shape == y.shape
        assert float(np.abs(guest.outputs[name] - y).max()) <= 1e-4, name


@pytest.mark.parametrize("profile", PROFILES)
def test_every_head_on_arm64_within_tolerance_of_x86_litert(host, arm64, x86, profile):
    """The floor: each head's metric on the validation crops, this profile on emulated arm64
    against LiteRT on x86, within the head's conversion tolerance (the check `facemtl convert`
    makes). The table goes to the cache folder's arm64-report.md."""
    from facemtl.convert.check import Limits, check_head

    crops, spec = host["crops"], host["spec"]
    ref = _outputs(x86["litert"] / "crops.npz")
    guest = _outputs(arm64["dirs"][profile] / "crops.npz")
    checks = [check_head(h, ref.outputs[h.name], guest.outputs[h.name], crops.landmarks, crops.labels,
                         Limits.for_head(h), interpreter=f"{profile} {guest.version} (aarch64)") for h in spec.heads]
    _write_report(profile, checks, len(crops), arm64)
    metric_fails = {c.head: c.reasons for c in checks if c.delta is None or any("points" in r for r in c.reasons)}
    assert not metric_fails, metric_fails
    if profile == "litert":  # the same interpreter: the class answers agree too
        assert all(c.passed for c in checks), [(c.head, c.reasons) for c in checks]


def _write_report(profile: str, checks, faces: int, arm64: dict) -> None:
    path = pi_rootfs.CACHE / "arm64-report.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        data = {}
    times = {}
    for line in (arm64["dirs"][profile] / "times.txt").read_text().splitlines():
        name, _, sec = line.rpartition(" ")
        times[name] = float(sec)
    data[profile] = {"faces": faces, "heads": [c.to_dict() for c in checks], "guest_seconds": times,
                     "rootfs_seconds": arm64["timing"]}
    path.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("profile", PROFILES)
def test_sample_demo_runs_100_frames_on_arm64(arm64, profile):
    d = arm64["dirs"][profile]
    records = [json.loads(x) for x in (d / "demo.jsonl").read_text().splitlines()]
    assert len(records) == DEMO_FRAMES
    assert [r["frame"] for r in records] == list(range(DEMO_FRAMES))
    with_face = [r for r in records if r["faces"]]
    assert len(with_face) >= 0.9 * DEMO_FRAMES, f"faces in {len(with_face)} of {DEMO_FRAMES} frames"
    for r in with_face:
        assert np.array(r["faces"][0]["landmarks"]).shape == (5, 2)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["frames"] == DEMO_FRAMES and summary["bad_frames"] == 0, summary
    # the sample stream knows where the face's landmarks are: the model works, not only runs
    # (x86: about 4% of the inter-ocular distance)
    assert summary["sample"]["nme"] < 8.0 and summary["sample"]["frames_missed"] <= 0.1 * DEMO_FRAMES, summary["sample"]
