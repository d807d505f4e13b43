#!/usr/bin/env python3
"""A Raspberry Pi OS-like arm64 userspace on an x86 machine, for testing what a Pi runs.

Debian bookworm arm64 (the base of 64-bit Raspberry Pi OS: Python 3.11), built with
`debootstrap` and run under QEMU user-mode emulation through binfmt_misc, with the emulated
CPU pinned to a Pi's core. Built once, then kept as a zstd tarball in a cache folder outside
the clone (`$FACEMTL_ARM64_CACHE`, default /var/cache/facemtl-arm64) and unpacked afresh for
each use, so no run sees what an earlier one installed.

    python3 deploy/arm64/pi_rootfs.py check            # can this machine do it? (exit 3: no, and why)
    python3 deploy/arm64/pi_rootfs.py build            # build the cached tarball if missing (--force: anew)
    python3 deploy/arm64/pi_rootfs.py shell [CMD...]   # unpack, run CMD (default: bash) inside, clean up

tests/test_arm64.py (`pytest -m arm64`) drives it through `Rootfs`. Standard library only:
it runs before any virtual environment exists. Needs root (chroot, mounts), binfmt_misc and
Debian's archive; `host_problem()` says which is missing so that callers can skip.

Traps it avoids (measured with QEMU 7.2, bookworm's):
- QEMU user-mode shows the guest the host's x86 /proc/cpuinfo, and the interpreters' CPU
  detection (cpuinfo/XNNPACK) crashes on it: an ARM cpuinfo is bind-mounted over it.
- QEMU's default `max` CPU has SME, whose emulation makes ai-edge-litert give wrong numbers:
  QEMU_CPU pins a Pi 4's Cortex-A72 (`cortex-a76` for a Pi 5, through `cpu=`).
- Host variables (pip's local indexes, proxies' CA paths) must not reach the guest: it starts
  from `env -i`. A host that trusts extra CA certificates (an egress proxy) has them copied in.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("pi_rootfs")

SUITE = "bookworm"
MIRROR = os.environ.get("FACEMTL_ARM64_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("FACEMTL_ARM64_CACHE", "/var/cache/facemtl-arm64"))
# What docs/live.md's Raspberry Pi section installs with apt (less the camera's picamera2,
# which lives in Raspberry Pi OS's own archive), plus what the build itself needs.
PACKAGES = ("python3", "python3-venv", "libglib2.0-0", "ca-certificates")
HOST_PACKAGES = ("qemu-user-static", "binfmt-support", "debootstrap", "zstd")
# Bump to rebuild every cached tarball (the key also covers the packages and the host's CAs).
LAYOUT = 1
BINFMT = Path("/proc/sys/fs/binfmt_misc")
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
# Pi 4: Cortex-A72 (part 0xd08); Pi 5: Cortex-A76 (part 0xd0b).
CPUS = {"cortex-a72": ("0xd08", "3", "Raspberry Pi 4 Model B Rev 1.4"),
        "cortex-a76": ("0xd0b", "1", "Raspberry Pi 5 Model B Rev 1.0")}
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables that may pass into the guest (a proxy the host needs to reach the package index).
PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


class RootfsError(RuntimeError):
    """Building or entering the root file system failed (not a missing capability)."""


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    logger.debug("$ %s", shlex.join(map(str, cmd)))
    return subprocess.run([str(c) for c in cmd], **kw)


def _check(cmd, what: str, **kw) -> subprocess.CompletedProcess:
    r = _run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RootfsError(f"{what} failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    return r


def cpuinfo(cpu: str = "cortex-a72", cores: int | None = None) -> str:
    """An ARM /proc/cpuinfo as a Pi's kernel writes it, one entry per host core (the guest
    sees the host's core count everywhere else)."""
    part, rev, model = CPUS[cpu]
    entry = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
             "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
             f"CPU part\t: {part}\nCPU revision\t: {rev}\n\n")
    n = cores or os.cpu_count() or 1
    return "".join(entry.format(i=i) for i in range(n)) + f"Model\t\t: {model}\n"


def host_problem(install: bool = True) -> str | None:
    """Why this machine cannot run the arm64 userspace, or None. With `install`, Debian's
    qemu-user-static, binfmt-support, debootstrap and zstd are installed when missing, and
    binfmt_misc is mounted when it is not."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return f"needs Linux on x86_64 or aarch64, this is {platform.system()} {platform.machine()}"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot and mounts)"
    for tool in ("unshare", "mount", "chroot", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    missing = [p for p, exe in zip(HOST_PACKAGES, ("qemu-aarch64-static", "update-binfmts", "debootstrap", "zstd"))
               if shutil.which(exe) is None]
    if missing and platform.machine() == "aarch64":
        missing = [p for p in missing if p not in ("qemu-user-static", "binfmt-support")]
    if missing:
        if not install or shutil.which("apt-get") is None:
            return f"needs Debian packages {' '.join(missing)} (no apt-get to install them)"
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = _run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True, text=True, env=env)
        if r.returncode != 0:  # a stale package list: refresh it once
            _run(["apt-get", "update", "-qq"], capture_output=True, env=env)
            r = _run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["?"]
            return f"could not install {' '.join(missing)} with apt-get: {tail[0]}"
    if platform.machine() == "aarch64":
        return None
    if not (BINFMT / "status").exists():
        if not install:
            return "binfmt_misc is not mounted"
        r = _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True)
        if r.returncode != 0:
            return f"cannot mount binfmt_misc: {r.stderr.strip()}"
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() and install and shutil.which("update-binfmts"):
        _run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not entry.exists():
        return "no qemu-aarch64 binfmt_misc entry (update-binfmts --enable qemu-aarch64 failed)"
    text = entry.read_text()
    if not text.startswith("enabled"):
        return "the qemu-aarch64 binfmt_misc entry is disabled"
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("flags:")), "")
    if "F" not in flags:  # without F the interpreter would have to exist inside the chroot
        return f"the qemu-aarch64 binfmt_misc entry lacks the F flag (flags: {flags or 'none'})"
    return None


def _unmount_below(root: Path) -> None:
    """Lazily unmount anything still mounted under `root` (deepest first), so that deleting
    the tree never reaches the host's /proc or /dev through a mount left behind."""
    prefix = str(root.resolve()) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        _run(["umount", "-l", target], capture_output=True)


def _remove(path: Path) -> None:
    if path.exists():
        _unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)


def _extra_cas() -> list[Path]:
    return sorted(EXTRA_CAS.glob("**/*.crt")) if EXTRA_CAS.is_dir() else []


def cache_key() -> str:
    h = hashlib.sha256(f"{LAYOUT} {SUITE} {MIRROR} {' '.join(PACKAGES)}".encode())
    for ca in _extra_cas():
        h.update(ca.read_bytes())
    return h.hexdigest()[:12]


def tarball(cache: Path = CACHE) -> Path:
    return cache / f"{SUITE}-arm64-{cache_key()}.tar.zst"


def build(cache: Path = CACHE, log=logger.info) -> Path:
    """debootstrap the root file system (both stages) and pack it as the cached tarball."""
    out = tarball(cache)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="rootfs-build-", dir=cache))
    try:
        root = tmp / "root"
        t = time.perf_counter()
        _check(["debootstrap", "--arch=arm64", "--variant=minbase", "--foreign",
                "--include=" + ",".join(PACKAGES), SUITE, root, MIRROR], "debootstrap (first stage)")
        log(f"debootstrap first stage: {time.perf_counter() - t:.0f} s")
        # the host's extra CAs go in before the second stage: ca-certificates' own trigger there
        # adds them to the bundle (update-ca-certificates is minutes under emulation: run it once)
        dest = root / "usr/local/share/ca-certificates/host"
        for ca in _extra_cas():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(ca, dest / ca.name)
        t = time.perf_counter()
        _check(["chroot", root, "/debootstrap/debootstrap", "--second-stage"], "debootstrap (second stage, emulated)",
               env=_guest_env())
        log(f"debootstrap second stage (emulated): {time.perf_counter() - t:.0f} s")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (root / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        t = time.perf_counter()
        part = out.with_suffix(".part")
        _check(["tar", "-C", root, "--numeric-owner", "--one-file-system", "-I", "zstd -T0 -6", "-cf", part, "."],
               "packing the root file system")
        os.replace(part, out)
        log(f"packed {out} ({out.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s")
    finally:
        _remove(tmp)
    for stale in cache.glob(f"{SUITE}-arm64-*.tar.zst"):
        if stale != out:
            stale.unlink()
    return out


def ensure(cache: Path = CACHE, log=logger.info, force: bool = False) -> tuple[Path, bool]:
    """The cached tarball, built first if missing (or `force`); (path, whether it was built).
    One build at a time per cache: a second caller (a test while CI's background build
    runs) waits for the first and uses its tarball."""
    import fcntl

    out = tarball(cache)
    if out.is_file() and not force:
        return out, False
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file() and not force:
            return out, False
        return build(cache, log), True


def _guest_env(cpu: str = "cortex-a72", **extra: str) -> dict[str, str]:
    """The environment a chroot starts with: nothing of the host's but a proxy, if any.
    QEMU_CPU is read by qemu-user when binfmt_misc starts each arm64 program."""
    env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": cpu}
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    env.update(extra)
    return env


@dataclass
class Rootfs:
    """An unpacked copy of the cached root file system; `run` executes inside it.

        with Rootfs.open() as fs:
            fs.copy_in(wheel, "/tmp/")
            fs.run("python3 -c 'import platform; print(platform.machine())'")
    """

    root: Path
    cpu: str = "cortex-a72"
    pip_cache: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(cls, cache: Path = CACHE, cpu: str = "cortex-a72", log=logger.info) -> "Rootfs":
        if cpu not in CPUS:
            raise ValueError(f"cpu must be one of {', '.join(CPUS)}")
        seconds = {}
        t = time.perf_counter()
        tar, built = ensure(cache, log)
        seconds["build" if built else "wait"] = time.perf_counter() - t
        t = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
        root = work / "root"
        root.mkdir()
        _check(["tar", "-C", root, "--numeric-owner", "-I", "zstd -T0", "-xf", tar], "unpacking the root file system")
        seconds["unpack"] = time.perf_counter() - t
        log(f"unpacked {tar.name} in {seconds['unpack']:.1f} s")
        (root / "etc/facemtl-cpuinfo").write_text(cpuinfo(cpu))
        pip_cache = cache / "pip"  # wheels downloaded once, kept between runs
        pip_cache.mkdir(exist_ok=True)
        return cls(root, cpu, pip_cache, seconds)

    def path(self, guest: str) -> Path:
        return self.root / guest.lstrip("/")

    def copy_in(self, src: Path, guest: str) -> str:
        dest = self.path(guest)
        if guest.endswith("/"):
            dest.mkdir(parents=True, exist_ok=True)
            dest = dest / Path(src).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dest)
        return "/" + str(dest.relative_to(self.root))

    def command(self, script: str, env: dict[str, str] | None = None) -> list[str]:
        """Host argv that runs `script` (sh) in the guest: a private mount namespace (so the
        mounts go when it ends), /proc with the ARM cpuinfo over it, /dev, /sys, pip's cache,
        then chroot and `env -i`."""
        r = shlex.quote(str(self.root))
        mounts = [f"mount -t proc proc {r}/proc",
                  f"mount --bind {r}/etc/facemtl-cpuinfo {r}/proc/cpuinfo",
                  f"mount --rbind /dev {r}/dev",
                  f"mount -t sysfs sysfs {r}/sys"]
        if self.pip_cache is not None:
            (self.root / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
            mounts.append(f"mount --bind {shlex.quote(str(self.pip_cache))} {r}/root/.cache/pip")
        genv = _guest_env(self.cpu, **(env or {}))
        inner = ["chroot", str(self.root), "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in genv.items()],
                 "/bin/sh", "-c", script]
        outer = " && ".join(mounts) + " && exec " + shlex.join(inner)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", outer]

    def _host_env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", GUEST_PATH), "QEMU_CPU": self.cpu}

    def start(self, script: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """`run` without waiting: several scripts can run side by side (each on its own
        emulated core), their output captured as text."""
        return subprocess.Popen(self.command(script, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self._host_env(), start_new_session=True)  # stop(): the whole group

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        """End a `start`ed script and everything it started inside."""
        import signal

        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()

    def run(self, script: str, timeout: float | None = None, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        """Run `script` with /bin/sh inside; output captured as text."""
        r = _run(self.command(script, env), capture_output=True, text=True, timeout=timeout, env=self._host_env())
        if check and r.returncode != 0:
            raise RootfsError(f"in the arm64 root file system, `{script}` failed (exit {r.returncode}):\n"
                              f"{(r.stdout + r.stderr)[-4000:]}")
        return r

    def close(self) -> None:
        _remove(self.root.parent)

    def __enter__(self) -> "Rootfs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("check", "build", "shell"))
    p.add_argument("cmd", nargs="*", help="shell: the command to run inside (default: bash)")
    p.add_argument("--cache", type=Path, default=CACHE, help=f"cache folder (default {CACHE})")
    p.add_argument("--cpu", choices=tuple(CPUS), default="cortex-a72", help="emulated CPU (default: a Pi 4's)")
    p.add_argument("--force", action="store_true", help="build: rebuild even if the tarball is cached")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problem = host_problem()
    if problem:
        print(f"this machine cannot run the arm64 root file system: {problem}", file=sys.stderr)
        return 3
    if args.action == "check":
        print(f"ok: cache {tarball(args.cache)} ({'present' if tarball(args.cache).is_file() else 'to be built'})")
        return 0
    if args.action == "build":
        path, built = ensure(args.cache, force=args.force)
        print(f"{'built' if built else 'cached'}: {path}")
        return 0
    with Rootfs.open(args.cache, args.cpu) as fs:
        script = shlex.join(args.cmd) if args.cmd else "exec /bin/bash"
        return subprocess.call(fs.command(script), env=fs._host_env())


if __name__ == "__main__":
    sys.exit(main())
