"""Run one program inside the emulated board, without RPC: e.g. an offline bundle's runner under qemu-user.

Why: the offline bundle's claim is that a board with nothing but TVM's runtime and numpy can measure a
bundle. The emulated Raspberry Pi's rootfs is exactly such a board (runtime-only TVM, no compiler, no
harness), so running ``runner.py`` *inside* it checks the claim end to end. Same isolation as the
board's RPC server (:mod:`harness.devices.emulated`): a private mount + PID namespace, proc/sys/dev and
a private tmpfs ``/tmp`` mounted inside the cached rootfs, ``env -i`` so no host variable leaks in,
``QEMU_CPU`` set to the board's core. Host folders are bind-mounted under the board's private ``/tmp``
only, so the cached rootfs is never written to, and everything vanishes with the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.devices.emulated import _DEVICE_PATH, _HOST_PATH
from harness.devices.emulated_rootfs import CHROOT_SCRIPT, EmulatedBoard, EmulatorUnavailable, ensure_rootfs


@dataclass(frozen=True)
class BoardRun:
    returncode: int
    output: str  # stdout and stderr, interleaved
    seconds: float


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """SIGKILL this child when the harness dies (``unshare --kill-child`` then takes the namespace down)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_on_board(board: EmulatedBoard, argv: list[str], binds: dict[Path, str], env: dict[str, str] | None = None,
                 timeout_s: float = 900, progress: bool = False) -> BoardRun:
    """Run ``argv`` (paths as the board sees them) on the emulated ``board``, host folder → ``/tmp/...`` binds.

    Raises :class:`EmulatorUnavailable` when the board cannot exist here (not root, no rootfs tools) and
    ``TimeoutError`` (after killing everything it started) when it runs past ``timeout_s``."""
    if os.geteuid() != 0:
        raise EmulatorUnavailable("the emulated board needs root (mount namespace and chroot)")
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool, path=_HOST_PATH) is None:
            raise EmulatorUnavailable(f"`{tool}` not found; apt-get install util-linux coreutils")
    pairs: list[str] = []
    for host, inside in binds.items():
        if not inside.startswith("/tmp/") or ".." in inside:
            raise ValueError(f"bind target {inside!r} must lie under the board's private /tmp")
        pairs += [str(Path(host).resolve()), inside]
    rootfs = ensure_rootfs(board.cache_dir, progress=progress)
    device_env = [f"PATH={_DEVICE_PATH}", "HOME=/root", "LANG=C.UTF-8", f"QEMU_CPU={board.qemu_cpu}",
                  "TVM_USE_RUNTIME_LIB=1", "PYTHONUNBUFFERED=1", *(f"{k}={v}" for k, v in (env or {}).items())]
    cmd = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "--",
           "/bin/sh", str(CHROOT_SCRIPT), str(rootfs), *pairs, "--", "/usr/bin/env", "-i", *device_env, *argv]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True, preexec_fn=_die_with_parent,
                            env={"PATH": _HOST_PATH, "QEMU_CPU": board.qemu_cpu, "LANG": "C.UTF-8"})
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise TimeoutError(f"{argv[0]} on the emulated {board.qemu_cpu} ran past {timeout_s:.0f} s; output:\n"
                           f"{out[-2000:]}") from None
    return BoardRun(proc.returncode, out, time.monotonic() - t0)
