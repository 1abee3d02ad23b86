"""What every device gives the harness: the :class:`Session` protocol, and a loaded artefact to run and time.

Local and remote (RPC) devices differ only in how a library gets loaded and which ``Device`` the
VM runs on; everything after that — running batches, timing with ``time_evaluator`` — is this one
class, so a figure measured on a board and one measured here come from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import tvm
from tvm import relax

if TYPE_CHECKING:
    from harness.devices.system import System
    from harness.sensors import Sensor


class DeviceError(RuntimeError):
    """The device is unreachable, died, or cannot run the artefact; the message says which."""


@dataclass
class LoadedModule:
    """A compiled Relax executable loaded on a device (local or remote)."""

    vm: relax.VirtualMachine
    dev: Any
    where: str  # human-readable device name for error messages

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x), self.dev))
            return out.numpy()
        except Exception as e:  # an RPC failure surfaces as a TVMError; say where it happened
            raise DeviceError(f"running the artefact on {self.where} failed: {str(e).splitlines()[0]}") from e

    def time(self, x: np.ndarray, warmup: int, number: int, repeat: int, cooldown_ms: int = 0,
             cooldown_every: int = 1) -> list[float]:
        """Seconds per call, one figure per repeat (each the mean of ``number`` back-to-back calls).

        ``cooldown_ms``: the device sleeps that long after every ``cooldown_every`` repeats, outside the
        timed region (``time_evaluator``'s own cool-down, so it happens on the board, not over the network)."""
        try:
            arg = tvm.runtime.tensor(np.ascontiguousarray(x), self.dev)
            for _ in range(warmup):
                self.vm["main"](arg)
            res = self.vm.time_evaluator("main", self.dev, number=number, repeat=repeat,
                                         cooldown_interval_ms=cooldown_ms, repeats_to_cooldown=cooldown_every)(arg)
            return [float(r) for r in res.results]
        except Exception as e:
            raise DeviceError(f"timing on {self.where} failed: {str(e).splitlines()[0]}") from e


@runtime_checkable
class Session(Protocol):
    """What every device session gives the harness (local, RPC, tracker, emulated, CUDA).

    ``available`` False means the device is absent (no CUDA GPU here): the harness then compiles and
    verifies, writes a not-run row and measures nothing. ``sensor`` measures energy where the device
    exposes a readable power or energy counter, else None (the column stays empty, never estimated).
    ``system`` reads the device's clock, temperature and memory files and configures its runtime's
    thread pool (None: nothing readable, e.g. no device).
    """

    measured_as: str  # "native" | "emulated" | "not run: ..." — how its figures are labelled
    where: str  # human-readable device name
    info: dict[str, Any]  # device facts for run.json
    available: bool
    sensor: Sensor | None
    system: System | None

    def load(self, path: Path) -> LoadedModule: ...

    def close(self) -> None: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc: object) -> None: ...


class SessionBase:
    """Defaults of the :class:`Session` protocol: present, no sensor, nothing to tear down.

    Subclasses set ``where`` and ``info`` in their constructor and override ``load``."""

    measured_as: str = "native"
    where: str = ""
    info: dict[str, Any]
    available: bool = True
    sensor: Sensor | None = None
    system: System | None = None

    def load(self, path: Path) -> LoadedModule:  # pragma: no cover - every device overrides it
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> SessionBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
