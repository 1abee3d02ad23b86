"""One timing phase per target: every variant timed in interleaved rounds, with the host's load measured.

Why: a variant timed right after its own attack sees whatever the machine is doing at that moment, so two
rows of one run were not measured side by side, and a busy host (a shared workstation, a CI runner) made
rows 100-2,000x wrong without a trace. Here every (variant, batch) of a target is timed after all of them
have been compiled, run and attacked, in ``rounds`` rounds whose order rotates, each slot preceded by a quiet
window in which nothing of ours runs: the CPU time other processes use in that window (``/proc/stat`` of the
device — locally less this process's own ticks; over RPC the device's own procfs, read through the server)
is the ``other_cpu_frac`` of the slot, and the device's 1-minute load average its ``host_load``. A slot
whose window shows more than :data:`BUSY_FRAC` of the machine in use by others marks its row busy; with
``quiet_host`` the phase first waits (bounded) for a quiet machine and refuses to time on a busy one.

``benchmarks/retime.py`` calls :func:`timing_phase` too: re-timing a run is this code path, not a copy.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from harness.devices.base import LoadedModule
from harness.devices.system import System
from harness.measure import LatencyProtocol, LatencyStats, stats

BUSY_FRAC = 0.25  # others using more than a quarter of the CPU time in a quiet window (half a core of 2) = busy
QUIET_WINDOW_S = 0.3  # the quiet window doubles as the settle pause (PyTorch's OpenMP workers stop spinning)
QUIET_WAIT_S = 120.0  # --quiet-host: how long to wait for the device to calm down before refusing to time


class BusyHost(RuntimeError):
    """``--quiet-host``: the device did not calm down within the wait; nothing was timed."""


@dataclass(frozen=True)
class HostLoad:
    """The device's load in one quiet window: ``None`` where its procfs is not readable."""

    load1: float | None  # 1-minute load average
    other_cpu_frac: float | None  # fraction of all CPUs' time used by other processes in the window

    @property
    def busy(self) -> bool:
        return self.other_cpu_frac is not None and self.other_cpu_frac > BUSY_FRAC


def _cpu_jiffies(system: System | None) -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from the device's ``/proc/stat``."""
    text = system.read("/proc/stat") if system is not None else None
    if not text:
        return None
    fields = [int(v) for v in text.splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_ticks() -> int:
    """This process's user + system clock ticks (all threads)."""
    t = os.times()
    return round((t.user + t.system) * os.sysconf("SC_CLK_TCK"))


def sample_load(system: System | None, local: bool, window_s: float = QUIET_WINDOW_S) -> HostLoad:
    """Sleep ``window_s`` and report what others did with the device's CPUs meanwhile (and its load average)."""
    a, own_a = _cpu_jiffies(system), _own_ticks()
    time.sleep(window_s)
    b, own_b = _cpu_jiffies(system), _own_ticks()
    frac = None
    if a is not None and b is not None and b[1] > a[1]:
        busy = (b[0] - a[0]) - ((own_b - own_a) if local else 0)
        frac = round(min(1.0, max(0.0, busy / (b[1] - a[1]))), 3)
    load_text = system.read("/proc/loadavg") if system is not None else None
    load1 = float(load_text.split()[0]) if load_text else None
    return HostLoad(load1, frac)


def wait_for_quiet(system: System | None, local: bool, max_wait_s: float, log: Callable[[str], None]) -> HostLoad:
    """``--quiet-host``: sample once a second until the device is quiet, at most ``max_wait_s``; else refuse."""
    deadline = time.monotonic() + max_wait_s
    load = sample_load(system, local, 1.0)
    if load.other_cpu_frac is None:
        raise BusyHost("--quiet-host: the device's /proc/stat is not readable, so its load cannot be checked; "
                       "drop --quiet-host to time anyway (rows then carry no load figures)")
    while load.busy and time.monotonic() < deadline:
        log(f"waiting for a quiet host: other processes use {load.other_cpu_frac:.0%} of the CPUs "
            f"(load average {load.load1})")
        load = sample_load(system, local, 1.0)
    if load.busy:
        raise BusyHost(f"--quiet-host: other processes still used {load.other_cpu_frac:.0%} of the device's CPUs "
                       f"(load average {load.load1}) after {max_wait_s:.0f} s; nothing was timed (finished attacks "
                       "are kept: re-run when the machine is quiet, or drop --quiet-host to time and flag the rows)")
    return load


@dataclass
class Timed:
    """One (variant, batch) slot's result: statistics over every repeat of every round, and the load seen."""

    stats: LatencyStats
    round_medians_ms: list[float]
    loads: list[HostLoad] = field(default_factory=list)
    number: int = 0  # calls per repeat actually used (calls_per_repeat)

    @property
    def spread_pct(self) -> float:
        """(slowest − fastest round median) / median of the round medians, in percent."""
        m = float(np.median(self.round_medians_ms))
        return round(100 * (max(self.round_medians_ms) - min(self.round_medians_ms)) / m, 1) if m > 0 else 0.0

    @property
    def other_cpu_frac(self) -> float | None:
        vals = [v.other_cpu_frac for v in self.loads if v.other_cpu_frac is not None]
        return max(vals) if vals else None

    @property
    def host_load(self) -> float | None:
        vals = [v.load1 for v in self.loads if v.load1 is not None]
        return max(vals) if vals else None

    @property
    def busy(self) -> bool:
        return any(v.busy for v in self.loads)


MIN_REPEAT_S = 0.05  # a repeat of at least this long is timed well by a wall clock; longer ones add nothing


def calls_per_repeat(call_s: float, requested: int) -> int:
    """Back-to-back calls a repeat averages: the protocol's ``number``, or fewer where a repeat of that many
    would last beyond :data:`MIN_REPEAT_S` — at least one call, and enough to reach it.

    Why: ``number`` (10) is sized for sub-millisecond calls, where one call is too short to time alone. A
    MobileNetV2 at 224×224 and batch 64 takes ~1 s a call on 2 cores: 3 rounds × 20 repeats × 10 calls were
    ~30 minutes of timing for two variants, where one call a repeat times it just as well. Every row records
    the number used (``number``; ``small/large`` when they differ)."""
    if call_s <= 0:
        return requested
    return max(1, min(requested, math.ceil(MIN_REPEAT_S / call_s)))


def timing_phase(slots: dict[Hashable, tuple[LoadedModule, np.ndarray]], proto: LatencyProtocol,
                 system: System | None, local: bool, log: Callable[[str], None] | None = None
                 ) -> dict[Hashable, Timed]:
    """Time every slot (a loaded module and its input) in ``proto.rounds`` interleaved rounds, the order rotated
    each round; each slot gets the protocol's ``repeat`` figures a round (``rounds`` × ``repeat`` in all: with
    the repeats split over 3 rounds, 7 figures a round left batch-1 medians 10-17 % above a 5 × 20 re-timing of
    the same artefacts on a quiet host; 3 × 20 came within 3 %) after a quiet window and ``warmup`` untimed
    calls."""
    rounds = proto.rounds
    keys = list(slots)
    per_round = proto.repeat
    seconds: dict[Hashable, list[float]] = {k: [] for k in keys}
    medians: dict[Hashable, list[float]] = {k: [] for k in keys}
    loads: dict[Hashable, list[HostLoad]] = {k: [] for k in keys}
    number = {k: calls_per_repeat(min(slots[k][0].time(slots[k][1], 1, 1, 1)), proto.number) for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[: r % len(keys)] if keys else []
        for k in order:
            mod, x = slots[k]
            loads[k].append(sample_load(system, local))
            got = mod.time(x, proto.warmup, number[k], per_round, proto.cooldown_ms, proto.cooldown_every)
            seconds[k] += got
            medians[k].append(float(np.median(got)) * 1e3)
        if log is not None:
            log(f"timing round {r + 1}/{rounds} done")
    return {k: Timed(stats(int(slots[k][1].shape[0]), seconds[k]), medians[k], loads[k], number[k]) for k in keys}


def describe(proto: LatencyProtocol) -> str:
    """``bench``'s timing phase as rows and reports state it."""
    per_round = proto.repeat
    cool = (f", {proto.cooldown_ms} ms cool-down after every {proto.cooldown_every} repeat(s) (outside the timed "
            "region)" if proto.cooldown_ms else "")
    pin = f"; runtime threads pinned one per core ({proto.pin_threads})" if proto.pin_threads else ""
    return (f"one timing phase after every variant was attacked: {proto.rounds} interleaved rounds (order rotated), "
            f"each slot a {QUIET_WINDOW_S * 1e3:.0f} ms quiet window (host load sampled), {proto.warmup} warm-up "
            f"calls, {per_round} repeats x {proto.number} calls (fewer where a repeat would exceed "
            f"{MIN_REPEAT_S * 1e3:.0f} ms; the row's number column){cool}; median/p90/p99 over all "
            f"{per_round * proto.rounds} repeats; busy = others used > {BUSY_FRAC:.0%} of the CPUs in a window{pin}")
