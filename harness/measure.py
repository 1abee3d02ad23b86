"""Measurements on a loaded artefact: outputs over a data set, and the latency protocol.

Accuracy is always computed from the artefact's own outputs. Latency uses TVM's
``time_evaluator`` on the device: ``warmup`` untimed calls, then ``repeat`` figures, each the mean
of ``number`` back-to-back calls; we report median, p90, mean and std over the repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.devices.base import LoadedModule


@dataclass(frozen=True)
class LatencyProtocol:
    warmup: int = 5
    number: int = 10
    repeat: int = 20

    def describe(self) -> str:
        return f"{self.warmup} warm-up calls, {self.repeat} repeats x {self.number} calls, median/p90 over repeats"


@dataclass(frozen=True)
class LatencyStats:
    batch: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float

    @property
    def throughput(self) -> float:
        """Samples per second at this batch size (from the median)."""
        return self.batch / (self.median_ms / 1e3) if self.median_ms > 0 else float("nan")


def latency(mod: LoadedModule, x: np.ndarray, proto: LatencyProtocol) -> LatencyStats:
    t = np.asarray(mod.time(x, proto.warmup, proto.number, proto.repeat)) * 1e3
    return LatencyStats(int(x.shape[0]), float(np.median(t)), float(np.percentile(t, 90)), float(t.mean()),
                        float(t.std(ddof=1)) if len(t) > 1 else 0.0)


def outputs(mod: LoadedModule, x: np.ndarray, batch: int) -> np.ndarray:
    """Run the whole array through a module compiled for a fixed batch (last batch zero-padded)."""
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        if n < batch:
            pad = np.zeros((batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        outs.append(mod.run(chunk)[:n])
    return np.concatenate(outs)
