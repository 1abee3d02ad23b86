"""A device behind TVM RPC: a direct ``host:port`` server or a key in an RPC tracker.

Every wait is bounded: a TCP probe before connecting (TVM's own connect retries for a long time),
a timeout around ``tracker.request`` (which otherwise blocks forever when no free server has the
key), and a session timeout on the server side.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import tvm
from tvm import relax, rpc

from harness.devices.base import DeviceError, LoadedModule, SessionBase
from harness.devices.system import RemoteSystem


def _probe(host: str, port: int, timeout_s: float, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise DeviceError(f"{what} at {host}:{port} is unreachable ({e}); is the server running and the "
                          "address right?") from e


def _within(call, wait_s: float):
    """``call()`` in a daemon thread joined for ``wait_s``: (result, None), (None, error) or
    (None, None) when it did not answer in time. TVM's ``rpc.connect`` has no timeout once TCP is up
    (a server busy with another session just does not answer) and ``tracker.request`` blocks
    forever without a free server."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["ok"] = call()
        except Exception as e:  # handed back to the caller, which names the address
            box["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(wait_s)
    return box.get("ok"), box.get("err")


def connect_direct(host: str, port: int, session_timeout_s: float, wait_s: float):
    """A session with a direct ``host:port`` server, every step bounded by ``wait_s``."""
    _probe(host, port, wait_s, "RPC server")
    remote, err = _within(lambda: rpc.connect(host, port, session_timeout=session_timeout_s), wait_s)
    if remote is not None:
        return remote
    why = ((str(err).strip().splitlines() or [type(err).__name__])[0] if err is not None else
           f"no answer within {wait_s:.0f} s (a TVM RPC server serves one session at a time: is another "
           "client holding it?)")
    raise DeviceError(f"RPC server {host}:{port}: {why}")


def tracker_request(host: str, port: int, key: str, session_timeout_s: float, wait_s: float):
    """A session from a tracker key, every step bounded by ``wait_s``.

    When no server answers in time, the tracker's summary (for the message) is read over a *new*
    connection: the timed-out ``request`` is still parked in ``recv`` on the first one, and a summary
    sent there could be answered to that thread instead — the caller would then wait forever.
    """
    _probe(host, port, wait_s, "RPC tracker")
    tracker, err = _within(lambda: rpc.connect_tracker(host, port), wait_s)
    if tracker is None:
        raise DeviceError(f"RPC tracker at {host}:{port} did not answer the handshake"
                          + (f": {err}" if err is not None else f" within {wait_s:.0f} s"))
    remote, err = _within(lambda: tracker.request(key, priority=1, session_timeout=session_timeout_s), wait_s)
    if remote is not None:
        return remote
    detail = f": {err}" if err is not None else f" within {wait_s:.0f} s"
    summary, _ = _within(lambda: rpc.connect_tracker(host, port).text_summary(), wait_s)
    raise DeviceError(f"no free RPC server with key {key!r} at tracker {host}:{port}{detail}. "
                      f"Tracker says:\n{summary or '(tracker summary unavailable)'}")


class RPCSession(SessionBase):
    """A remote device; ``measured_as`` says whether its figures are native or emulated."""

    def __init__(self, host: str, port: int, threads: int, key: str = "", tracker: bool = False,
                 session_timeout_s: float = 600.0, connect_timeout_s: float = 30.0,
                 measured_as: str = "native", server: object | None = None) -> None:
        self.measured_as = measured_as
        self.server = server  # an emulated board's server, owned by whoever started it (fault tests reach it here)
        self.where = f"tracker {host}:{port} key {key}" if tracker else f"RPC server {host}:{port}"
        try:
            if tracker:
                self.remote = tracker_request(host, port, key, session_timeout_s, connect_timeout_s)
            else:
                self.remote = connect_direct(host, port, session_timeout_s, connect_timeout_s)
        except DeviceError:
            raise
        except Exception as e:
            raise DeviceError(f"cannot open an RPC session with {self.where}: {str(e).splitlines()[0]} "
                              "(host and device must run the same TVM version)") from e
        self.system = RemoteSystem(self.remote, self.where)
        try:
            self.system.config_threadpool(1, threads)
        except Exception as e:
            raise DeviceError(f"{self.where} did not accept a thread-pool setting: {str(e).splitlines()[0]}") from e
        self.info = {"device_tvm": tvm.__version__ + " (RPC protocol checked at connect)"}

    def load(self, path: Path) -> LoadedModule:
        try:
            self.remote.upload(str(path))
            lib = self.remote.load_module(path.name)
        except Exception as e:
            msg = str(e).splitlines()[0]
            hint = (" — the library was probably built for another architecture than the device's"
                    if "cannot open shared object" in msg or "wrong ELF" in msg or "ELF" in msg else "")
            raise DeviceError(f"loading {path.name} on {self.where} failed: {msg}{hint}") from e
        dev = self.remote.cpu()
        return LoadedModule(relax.VirtualMachine(lib, dev), dev, self.where)

    def close(self) -> None:
        self.remote = None
        self.system = None
