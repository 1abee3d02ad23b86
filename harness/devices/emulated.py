"""An emulated Raspberry Pi: TVM's RPC server in an arm64 Debian chroot under qemu user mode.

Why this exists: the benchmark cross-compiles for aarch64 boards, and CI has no board. An arm64
rootfs with the same TVM version as the host (built once by ``scripts/emu_rootfs.sh`` and cached
outside the repository) runs ``python -m tvm.exec.rpc_server`` through binfmt + ``qemu-aarch64``,
so the exact artefact a Pi would load (a cross-compiled ``.so``) is uploaded, loaded and run over
the real RPC protocol. ``QEMU_CPU`` makes qemu refuse instructions the modelled core lacks (e.g.
``sdot`` on a Cortex-A72), so a wrongly targeted build fails here as it would on the board.

Emulated timings are smoke tests only: qemu's instruction translation says nothing about a real
board's speed.

Design choices, each for a failure seen in practice:

* The server runs in a private mount and PID namespace (``unshare --mount --pid --fork``) where
  proc, sys, dev and a tmpfs on ``/tmp`` are mounted inside the rootfs. The mounts are never
  visible on the host and vanish with the namespace, two servers can share one rootfs, and
  uploaded files never pollute the cached rootfs.
* TVM's server runs its listen loop in a Popen worker child and forks one more child per session;
  killing only the server leaves those alive. Killing the namespace's PID 1 makes the kernel kill
  and reap them all (no orphans, no zombies); the server's own session/process group (``setsid``)
  is killed too as a safety net.
* The namespace's PID 1 watches a pipe from this process: if the harness dies without tearing
  down (SIGKILL, CI timeout), the server dies with it instead of lingering.
* ``env -i``: host variables (``PYTHONPATH``, ``LD_LIBRARY_PATH``, a venv's ``PATH``) would
  otherwise leak into the arm64 world and break imports.
* ``TVM_USE_RUNTIME_LIB=1``: the device only loads and runs compiled modules; the rootfs has no
  ``libtvm_compiler.so`` (import is ~3x faster under qemu without it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from harness.devices.emulated_rootfs import (
    CHROOT_SCRIPT,
    DEVICE_PYTHON,
    RASPBERRY_PI_4,
    RASPBERRY_PI_5,
    EmulatedBoard,
    EmulatorUnavailable,
    ensure_rootfs,
    rootfs_ready,
)

_DEVICE_PATH = "/opt/tvm-venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

__all__ = [
    "DEVICE_PYTHON",
    "RASPBERRY_PI_4",
    "RASPBERRY_PI_5",
    "EmulatedBoard",
    "EmulatedRPCServer",
    "EmulatorUnavailable",
    "ensure_rootfs",
    "rootfs_ready",
]


def _free_port(host: str) -> int:
    """A TCP port the kernel reports free now (the server binds exactly it: ``[P, P+1)``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (empty if ``pid`` is gone); best effort without psutil."""
    try:
        import psutil
    except ImportError:
        return [pid]
    try:
        proc = psutil.Process(pid)
        return [pid] + [c.pid for c in proc.children(recursive=True)]
    except psutil.Error:
        return []


def _direct_children(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        return []
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=False)]
    except psutil.Error:
        return []


class EmulatedRPCServer:
    """Context manager: TVM RPC server of an emulated board, listening on ``host:port``.

    Use::

        with EmulatedRPCServer(RASPBERRY_PI_4) as srv:
            remote = tvm.rpc.connect(srv.host, srv.port, session_timeout=600)

    Needs root (mount namespaces and chroot). ``__enter__`` returns once the server answered a
    real RPC handshake; ``__exit__`` always kills the whole process group.
    """

    def __init__(
        self,
        board: EmulatedBoard,
        port: int | None = None,
        startup_timeout_s: float = 120,
        *,
        progress: bool = True,
        tracker: tuple[str, int] | None = None,
        key: str = "",
    ) -> None:
        self.board = board
        # registered with an RPC tracker under ``key`` (a farm of emulated boards): reached through the tracker
        # only (it hands clients the match key), so readiness is the registration, not a direct handshake
        self.tracker, self.key = tracker, key
        self.host = "127.0.0.1"
        self.port: int = port if port is not None else 0
        self._port_given = port is not None
        self.startup_timeout_s = startup_timeout_s
        self.progress = progress
        self.rootfs: Path | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pids: set[int] = set()
        self.startup_s: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> EmulatedRPCServer:
        if os.geteuid() != 0:
            raise EmulatorUnavailable(
                "the emulated board needs root (mount namespace and chroot); run as root, or use a real board over RPC"
            )
        for tool in ("unshare", "chroot", "mount"):
            if shutil.which(tool, path=_HOST_PATH) is None:
                raise EmulatorUnavailable(f"`{tool}` not found; apt-get install util-linux coreutils")
        self.rootfs = ensure_rootfs(self.board.cache_dir, progress=self.progress)
        if not self._port_given:
            self.port = _free_port(self.host)
        t0 = time.monotonic()
        try:
            self._start()
            self._wait_ready(t0 + self.startup_timeout_s)
        except BaseException:
            self._teardown(keep_log=False)  # the exception already carries the log's tail
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Keep the server log when the block failed: it often says why.
        self._teardown(keep_log=exc_type is not None)

    def kill(self) -> None:
        """SIGKILL the server and every process it started (the fault tests' "board died").

        The server runs as PID 1 of its own PID namespace (the child of ``unshare --fork``).
        Killing that one process makes the kernel kill and reap everything else in the
        namespace, and ``unshare`` then reaps it and exits: no orphans, no zombies left for the
        host's init. The process-group kill afterwards is a safety net.
        """
        proc = self._proc
        if proc is None:
            return
        # Record the tree first: once a parent dies, its children are re-parented and can no
        # longer be found from it.
        self._pids.update(_process_tree(proc.pid))
        for pid in _direct_children(proc.pid):  # the namespace's PID 1
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in self._pids - {proc.pid}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    @property
    def alive(self) -> bool:
        """Whether the server's main process is still running."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pids(self) -> set[int]:
        """Processes of the server seen so far (main process, Popen worker, session children)."""
        if self._proc is not None and self._proc.poll() is None:
            self._pids.update(_process_tree(self._proc.pid))
        return set(self._pids)

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the server's combined stdout/stderr."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n_chars:]

    # -- internals ---------------------------------------------------------------------------
    def _command(self) -> list[str]:
        assert self.rootfs is not None
        device_env = [
            f"PATH={_DEVICE_PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            f"QEMU_CPU={self.board.qemu_cpu}",
            "TVM_USE_RUNTIME_LIB=1",
            "PYTHONUNBUFFERED=1",
        ]
        server = [
            DEVICE_PYTHON, "-m", "tvm.exec.rpc_server",
            "--host", self.host, "--port", str(self.port), "--port-end", str(self.port + 1),
        ]  # fmt: skip
        if self.tracker is not None:
            server += ["--tracker", f"{self.tracker[0]}:{self.tracker[1]}", "--key", self.key]
        return [
            "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "--",
            "/bin/sh", str(CHROOT_SCRIPT), "--watch-stdin", str(self.rootfs), "--",
            "/usr/bin/env", "-i", *device_env, *server,
        ]  # fmt: skip

    def _start(self) -> None:
        fd, name = tempfile.mkstemp(prefix=f"laaq-emu-rpc-{self.port}-", suffix=".log")
        self.log_path = Path(name)
        try:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.PIPE,  # the watchdog pipe (scripts/emu_chroot.sh --watch-stdin); never written
                stdout=fd,
                stderr=subprocess.STDOUT,
                # setsid: own process group, so teardown reaches the Popen worker and sessions.
                start_new_session=True,
                # QEMU_CPU also for /usr/bin/env itself, the first arm64 program started.
                env={"PATH": _HOST_PATH, "QEMU_CPU": self.board.qemu_cpu, "LANG": "C.UTF-8"},
            )
        finally:
            os.close(fd)
        self._pids.add(self._proc.pid)

    def _wait_ready(self, deadline: float) -> None:
        """Poll with real RPC handshakes until one succeeds, the server dies, or time runs out."""
        import tvm.rpc  # noqa: F401 - import once here, not inside the bounded probe

        assert self._proc is not None
        last_error = "no attempt"
        while True:
            if self._proc.poll() is not None:
                raise EmulatorUnavailable(
                    f"the emulated RPC server ({self.board.qemu_cpu}) exited with code "
                    f"{self._proc.returncode} before accepting connections; its log "
                    f"({self.log_path}):\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmulatorUnavailable(
                    f"the emulated RPC server on {self.host}:{self.port} did not accept an RPC "
                    f"session within {self.startup_timeout_s:.0f} s (last error: {last_error}). "
                    f"A first start under qemu takes ~10 s; a loaded machine more (raise "
                    f"startup_timeout_s). Server log ({self.log_path}):\n{self.log_tail()}"
                )
            self._pids.update(_process_tree(self._proc.pid))
            ok, last_error = (self._registered() if self.tracker is not None
                              else self._try_handshake(min(remaining, 15.0)))
            if ok:
                return
            time.sleep(0.5)

    def _registered(self) -> tuple[bool, str]:
        """Has this server (its port) registered with the tracker under its key?"""
        from tvm import rpc

        try:
            servers = rpc.connect_tracker(*self.tracker).summary()["server_info"]
        except Exception as exc:  # noqa: BLE001 - tracker not answering yet
            return False, f"tracker: {type(exc).__name__}: {exc}"
        mine = [s for s in servers if s["key"].split(":")[-1] == self.key and int(s["addr"][1]) == self.port]
        return bool(mine), f"not registered with the tracker under {self.key!r} yet"

    def _try_handshake(self, timeout_s: float) -> tuple[bool, str]:
        """One RPC connect + a remote call, bounded by ``timeout_s`` even if the server hangs.

        ``rpc.connect`` has no timeout of its own once TCP is up, so it runs in a daemon thread;
        a stuck attempt is released when teardown kills the server and closes the socket.
        """
        from tvm import rpc

        result: dict[str, str | bool] = {"ok": False, "err": "timed out"}

        def attempt() -> None:
            try:
                sess = rpc.connect(self.host, self.port, session_timeout=timeout_s + 5)
                sess.cpu(0).exist  # noqa: B018 - a round trip, not just a TCP accept
                del sess
                result["ok"] = True
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                result["err"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}"

        th = threading.Thread(target=attempt, name="emu-rpc-probe", daemon=True)
        th.start()
        end = time.monotonic() + timeout_s
        # Wait in slices: a probe stuck on someone else's socket must not hide the server's death.
        while th.is_alive() and time.monotonic() < end and self._proc is not None and self._proc.poll() is None:
            th.join(0.25)
        return bool(result["ok"]), str(result["err"])

    def _teardown(self, keep_log: bool) -> None:
        proc = self._proc
        self.kill()
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        self._proc = None
        if not keep_log and self.log_path is not None and self.log_path.exists():
            with contextlib.suppress(OSError):
                self.log_path.unlink()
