"""The emulated board's root file system: an arm64 Debian with the same TVM, built once and cached.

:func:`ensure_rootfs` runs ``scripts/emu_rootfs.sh`` (idempotent) and returns the cached rootfs
that :class:`harness.devices.emulated.EmulatedRPCServer` chroots into. Split from the server so that
building/locating the rootfs (a set-up concern, shared with ``make emu-device``) and running a server
in it (a device session) each have one home.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from laaq.cache import cache_root

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOTFS_SCRIPT = REPO_ROOT / "scripts" / "emu_rootfs.sh"
#: The one chroot recipe (mounts, binds, watchdog), shared by the RPC server, board runs and the rootfs build.
CHROOT_SCRIPT = REPO_ROOT / "scripts" / "emu_chroot.sh"
#: Python of the venv inside the rootfs (runtime-only TVM, cloudpickle, psutil, numpy).
DEVICE_PYTHON = "/opt/tvm-venv/bin/python"
_QEMU_CPU_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Exit code of emu_rootfs.sh when root is needed; it then prints the exact commands to run.
_RC_NEEDS_ROOT = 3


class EmulatorUnavailable(RuntimeError):
    """The emulated device cannot be provided here; the message says why and what to do."""


@dataclass(frozen=True)
class EmulatedBoard:
    """An aarch64 board modelled by qemu user mode.

    Attributes:
        qemu_cpu: qemu's CPU model (``qemu-aarch64-static -cpu help``), e.g. ``"cortex-a72"``
            (Raspberry Pi 4) or ``"cortex-a76"`` (Raspberry Pi 5). It must match the compile
            target's ``mcpu``; otherwise code the board cannot run may still run here.
        cache_dir: cache root for the rootfs (default ``$LAAQ_EMU_CACHE``, else ``$LAAQ_CACHE``,
            else ``~/.cache/laaq-bench``); the rootfs lives in
            ``<cache_dir>/emu/<tvm-version>/rootfs``.
    """

    qemu_cpu: str
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if not _QEMU_CPU_RE.match(self.qemu_cpu):
            raise ValueError(f"not a qemu CPU model name: {self.qemu_cpu!r}")


RASPBERRY_PI_4 = EmulatedBoard(qemu_cpu="cortex-a72")
RASPBERRY_PI_5 = EmulatedBoard(qemu_cpu="cortex-a76")


def _script_env(cache_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if cache_dir is not None:
        env["LAAQ_EMU_CACHE"] = str(Path(cache_dir).expanduser().resolve())
    env.setdefault("LAAQ_EMU_CACHE", str(cache_root()))  # the project's one cache root (laaq.cache)
    # The wheels are fetched with the pip of the Python running the harness (the project venv).
    env.setdefault("LAAQ_HOST_PYTHON", sys.executable)
    return env


def _check_platform() -> None:
    if not sys.platform.startswith("linux"):
        raise EmulatorUnavailable(f"the emulated device needs Linux (chroot, binfmt_misc); this is {sys.platform}")
    if not ROOTFS_SCRIPT.is_file():
        raise EmulatorUnavailable(f"{ROOTFS_SCRIPT} is missing; is this a full checkout?")


def ensure_rootfs(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Make the host ready and return the cached arm64 rootfs, building it on first use.

    Runs ``scripts/emu_rootfs.sh``, which is idempotent: when everything is in place it only checks
    (~0.2 s); from a compressed cache it unpacks in seconds; from nothing it takes ~7 minutes
    (mmdebstrap under qemu, then the aarch64 wheels installed offline).

    Args:
        cache_dir: cache root (default ``$LAAQ_EMU_CACHE``, else ``$LAAQ_CACHE``, else
            ``~/.cache/laaq-bench``).
        progress: forward the script's progress lines to stderr (they are kept for the error
            message either way).

    Raises:
        EmulatorUnavailable: with the remedy (missing root, packages, binfmt, network, ...).
    """
    _check_platform()
    cmd = ["bash", str(ROOTFS_SCRIPT)]
    if not progress:
        cmd.append("--quiet")
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=_script_env(cache_dir),
        )
    except OSError as exc:
        raise EmulatorUnavailable(f"cannot run {ROOTFS_SCRIPT}: {exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    # stdout carries only the final path, so reading stderr to the end first cannot deadlock.
    for line in proc.stderr:
        tail.append(line.rstrip("\n"))
        if progress:
            print(line, end="", file=sys.stderr, flush=True)
    out = proc.stdout.read()
    rc = proc.wait()
    log = "\n".join(tail)
    if rc == _RC_NEEDS_ROOT:
        raise EmulatorUnavailable(f"the emulated device needs root to be set up (apt packages, binfmt, chroot):\n{log}")
    if rc != 0:
        raise EmulatorUnavailable(
            f"{ROOTFS_SCRIPT.name} failed (exit {rc}); last lines:\n{log}\n"
            f"Remedy: run `bash {ROOTFS_SCRIPT}` as root to see the full log; "
            "`--rebuild` discards a damaged cache."
        )
    lines = [ln for ln in out.splitlines() if ln.strip()]
    root = Path(lines[-1]) if lines else None
    if root is None or not (root / DEVICE_PYTHON.lstrip("/")).exists():
        raise EmulatorUnavailable(f"{ROOTFS_SCRIPT.name} succeeded but printed no usable rootfs path: {out!r}")
    return root


def rootfs_ready(cache_dir: Path | None = None) -> Path | None:
    """Return the rootfs if host and cache are ready to run it now, else None; changes nothing.

    Useful to decide whether a test can run without a ~7-minute first build.
    """
    try:
        _check_platform()
    except EmulatorUnavailable:
        return None
    res = subprocess.run(
        ["bash", str(ROOTFS_SCRIPT), "--check", "--quiet"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_script_env(cache_dir),
        check=False,
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    return Path(lines[-1]) if res.returncode == 0 and lines else None
