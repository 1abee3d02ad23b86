"""Measurements on a loaded artefact: outputs over a data set, and the latency protocol.

Accuracy is always computed from the artefact's own outputs. Latency uses TVM's
``time_evaluator`` on the device: a settle pause, ``warmup`` untimed calls, then ``repeat`` figures, each the mean
of ``number`` back-to-back calls, with an optional cool-down pause between repeats; we report
median, p90, p99, mean and std over the repeats (p99 of 20 repeats is close to their maximum).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from harness.devices.base import LoadedModule

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class LatencyProtocol:
    """How a figure is timed. ``cooldown_ms`` after every ``cooldown_every`` repeats lets a passively
    cooled board (a Raspberry Pi throttles within seconds) shed heat outside the timed region;
    ``pin_threads`` ("" TVM's own placement, "auto" or "0,1") binds the runtime's threads one per core."""

    warmup: int = 5
    number: int = 10
    repeat: int = 20
    cooldown_ms: int = 0
    cooldown_every: int = 1
    pin_threads: str = ""
    rounds: int = 3  # bench's timing phase: interleaved rounds over the target's variants (harness.timing)

    def __post_init__(self) -> None:
        if self.cooldown_ms < 0 or self.cooldown_every < 1:
            raise ValueError(f"cool-down {self.cooldown_ms} ms every {self.cooldown_every} repeat(s): give "
                             "--cooldown-ms >= 0 and --cooldown-every >= 1")
        if self.rounds < 1 or self.repeat < 1 or self.number < 1 or self.warmup < 0:
            raise ValueError(f"timing: --timing-rounds {self.rounds}, --repeat {self.repeat}, --number {self.number} "
                             f"must be >= 1 and --warmup {self.warmup} >= 0")
        from harness.devices.system import parse_pin

        parse_pin(self.pin_threads)  # a malformed core list stops here, before any work

    def describe(self) -> str:
        cool = (f", {self.cooldown_ms} ms cool-down after every {self.cooldown_every} repeat(s) (outside the timed "
                "region)" if self.cooldown_ms else ", no cool-down between repeats")
        pin = (f"; runtime threads pinned one per core ({self.pin_threads})" if self.pin_threads else
               "; runtime threads placed by TVM's default (config_threadpool mode 1)")
        return (f"{SETTLE_MS} ms settle pause, {self.warmup} warm-up calls, {self.repeat} repeats x {self.number} "
                f"calls{cool}, median/p90/p99 over repeats{pin}")


@dataclass(frozen=True)
class LatencyStats:
    batch: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    p99_ms: float = float("nan")

    @property
    def throughput(self) -> float:
        """Samples per second at this batch size (from the median)."""
        return self.batch / (self.median_ms / 1e3) if self.median_ms > 0 else float("nan")


def stats(batch: int, seconds: list[float]) -> LatencyStats:
    """Percentiles over the repeats, linearly interpolated (numpy's default): with 20 repeats p99 lies
    81 % of the way from the second-largest to the largest — in effect the worst repeat."""
    t = np.asarray(seconds, dtype=float) * 1e3
    return LatencyStats(batch, float(np.median(t)), float(np.percentile(t, 90)), float(t.mean()),
                        float(t.std(ddof=1)) if len(t) > 1 else 0.0, float(np.percentile(t, 99)))


SETTLE_MS = 300  # pause before timing (see latency)


def latency(mod: LoadedModule, x: np.ndarray, proto: LatencyProtocol) -> LatencyStats:
    """Time ``mod`` on ``x``. First a :data:`SETTLE_MS` pause: the figure is usually taken right after the
    attack, and PyTorch's OpenMP workers keep spinning after a parallel region (``KMP_BLOCKTIME`` 200 ms;
    GNU OpenMP spins too), stealing the cores from TVM's pool — on a 2-core host that made a sub-0.1 ms
    model look tens of times slower and ResNet-20 ~2× slower than in ``make perf`` (whose interleaved
    rounds pause the same way)."""
    time.sleep(SETTLE_MS / 1e3)
    return stats(int(x.shape[0]), mod.time(x, proto.warmup, proto.number, proto.repeat, proto.cooldown_ms,
                                           proto.cooldown_every))


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


def timed_call(mod: LoadedModule, x: np.ndarray) -> float:
    """Seconds one call takes (a single wall-clock reading: for choosing batch sizes, not for reporting)."""
    t0 = time.perf_counter()
    mod.run(x)
    return time.perf_counter() - t0


def outputs_mixed(mods: dict[int, LoadedModule], x: np.ndarray, call_s: dict[int, float]) -> np.ndarray:
    """:func:`outputs` over the largest batch, except a remainder that the smallest batch computes faster
    than one padded large call (by the call times measured at load: ``call_s``). For bit-exact (integer)
    artefacts only, whose outputs do not depend on the batch they were computed in.

    Why: Square queries a handful of surviving images at a time; padded to batch 64, a MobileNetV2 call at
    224×224 cost 0.8 s for 9 images where nine batch-1 calls cost ~0.1 s."""
    large, small = max(mods), min(mods)
    full = len(x) // large * large
    parts = [outputs(mods[large], x[:full], large)] if full else []
    rest = x[full:]
    if len(rest):
        b = small if len(rest) / small * call_s[small] < call_s[large] else large
        parts.append(outputs(mods[b], rest, b))
    return np.concatenate(parts)


# ------------------------------------------------------------------ side-by-side timing (benchmarks)
def interleaved(timers: Mapping[K, Callable[[], float]], rounds: int) -> dict[K, list[float]]:
    """Every timer's figure (ms) in each of ``rounds`` rounds, the timers run in turn and the order reversed
    every other round, so that drifting machine load (a thermal step, a neighbour's job) hits every
    contender alike. The one loop the benchmarks compare things with; ``bench`` itself uses
    :func:`harness.timing.timing_phase`, which adds load sampling and rotation over many slots."""
    out: dict[K, list[float]] = {k: [] for k in timers}
    for r in range(rounds):
        for k in (list(timers) if r % 2 == 0 else list(reversed(timers))):
            out[k].append(timers[k]())
    return out


def per_call_ms(fn: Callable[[], object], min_round_ms: float = 50.0, settle_ms: float = 300.0
                ) -> Callable[[], float]:
    """A timer for :func:`interleaved` of a plain callable: the mean per-call time of as many back-to-back
    calls as fill ``min_round_ms`` (sized once here, from a second call after a warm-up call).

    Each slot starts with a ``settle_ms`` pause and one untimed call. Runtimes keep their worker threads
    spinning after a call (OpenMP's KMP_BLOCKTIME is 200 ms, TVM's pool spins too); without the pause the
    previous contender's spinning threads steal the cores from the next one, which made sub-0.1 ms TVM
    models look 50-100x slower after a PyTorch slot on a 2-core machine."""
    fn()
    t0 = time.perf_counter()
    fn()
    n = max(1, int(min_round_ms / 1e3 / max(time.perf_counter() - t0, 1e-6)))

    def timer() -> float:
        time.sleep(settle_ms / 1e3)
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e3

    return timer


def latency_timer(mod: LoadedModule, x: np.ndarray, proto: LatencyProtocol) -> Callable[[], float]:
    """A timer for :func:`interleaved` of a loaded artefact: the median of :func:`latency` (bench's protocol)."""
    return lambda: latency(mod, x, proto).median_ms
