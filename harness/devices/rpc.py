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

from harness.devices.base import DeviceError, LoadedModule


def _probe(host: str, port: int, timeout_s: float, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise DeviceError(f"{what} at {host}:{port} is unreachable ({e}); is the server running and the "
                          "address right?") from e


def _tracker_request(host: str, port: int, key: str, session_timeout_s: float, wait_s: float):
    _probe(host, port, wait_s, "RPC tracker")
    tracker = rpc.connect_tracker(host, port)
    result: dict[str, object] = {}

    def ask() -> None:
        try:
            result["remote"] = tracker.request(key, priority=1, session_timeout=session_timeout_s)
        except Exception as e:  # surfaced below with the key named
            result["error"] = e

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(wait_s)
    if "remote" in result:
        return result["remote"]
    detail = f": {result['error']}" if "error" in result else f" within {wait_s:.0f} s"
    try:
        summary = tracker.text_summary()
    except Exception:
        summary = "(tracker summary unavailable)"
    raise DeviceError(f"no free RPC server with key {key!r} at tracker {host}:{port}{detail}. "
                      f"Tracker says:\n{summary}")


class RPCSession:
    """A remote device; ``measured_as`` says whether its figures are native or emulated."""

    def __init__(self, host: str, port: int, threads: int, key: str = "", tracker: bool = False,
                 session_timeout_s: float = 600.0, connect_timeout_s: float = 30.0,
                 measured_as: str = "native") -> None:
        self.measured_as = measured_as
        self.where = f"tracker {host}:{port} key {key}" if tracker else f"RPC server {host}:{port}"
        try:
            if tracker:
                self.remote = _tracker_request(host, port, key, session_timeout_s, connect_timeout_s)
            else:
                _probe(host, port, connect_timeout_s, "RPC server")
                self.remote = rpc.connect(host, port, session_timeout=session_timeout_s)
        except DeviceError:
            raise
        except Exception as e:
            raise DeviceError(f"cannot open an RPC session with {self.where}: {str(e).splitlines()[0]} "
                              "(host and device must run the same TVM version)") from e
        try:
            self.remote.get_function("runtime.config_threadpool")(1, threads)
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

    def __enter__(self) -> RPCSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
