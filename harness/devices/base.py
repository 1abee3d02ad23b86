"""What every device gives the harness: load an artefact, run it, time it.

Local and remote (RPC) devices differ only in how a library gets loaded and which ``Device`` the
VM runs on; everything after that — running batches, timing with ``time_evaluator`` — is this one
class, so a figure measured on a board and one measured here come from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax


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

    def time(self, x: np.ndarray, warmup: int, number: int, repeat: int) -> list[float]:
        """Seconds per call, one figure per repeat (each the mean of ``number`` back-to-back calls)."""
        try:
            arg = tvm.runtime.tensor(np.ascontiguousarray(x), self.dev)
            for _ in range(warmup):
                self.vm["main"](arg)
            res = self.vm.time_evaluator("main", self.dev, number=number, repeat=repeat)(arg)
            return [float(r) for r in res.results]
        except Exception as e:
            raise DeviceError(f"timing on {self.where} failed: {str(e).splitlines()[0]}") from e
