"""The timing phase (issue 28): every variant timed together in interleaved rounds, and a busy host noticed,
recorded and flagged — never a silently wrong row. Asserts on load figures and flags, never on speed."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest

from harness.devices.local import LocalSession
from harness.devices.system import LocalSystem
from harness.measure import LatencyProtocol
from harness.notes import row_warnings
from harness.timing import BUSY_FRAC, BusyHost, sample_load, timing_phase, wait_for_quiet

HOG = "import time\nend = time.time() + 60\nwhile time.time() < end:\n    pass\n"  # bounded: never outlives a test


@contextmanager
def cpu_hog():
    """One busy loop per core of this test's own affinity, stopped on exit (and after 60 s regardless)."""
    procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(len(os.sched_getaffinity(0)))]
    try:
        sample_load(LocalSystem(), local=True, window_s=0.5)  # let the loops get going
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


class _Fake:
    """A loaded module whose time() records the call order (no TVM: the rotation itself is under test)."""

    def __init__(self, name: str, log: list[str], seconds: float) -> None:
        self.name, self.log, self.seconds = name, log, seconds

    def time(self, x, warmup, number, repeat, cooldown_ms=0, cooldown_every=1):  # noqa: ANN001 - LoadedModule's
        self.log.append(self.name)
        return [self.seconds] * repeat


def test_rounds_rotate_the_order_and_split_the_repeats() -> None:
    log: list[str] = []
    slots = {k: (_Fake(k, log, s), np.zeros((1, 1))) for k, s in (("a", 1e-3), ("b", 2e-3), ("c", 3e-3))}
    timed = timing_phase(slots, LatencyProtocol(warmup=0, number=1, repeat=4, rounds=3), LocalSystem(), True)
    assert log[:3] == ["a", "b", "c"]  # one probe call each: how many calls a repeat needs (calls_per_repeat)
    assert log[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # every variant first once
    assert {t.number for t in timed.values()} == {1}
    for k, t in timed.items():
        assert len(t.round_medians_ms) == 3 and t.spread_pct == 0.0 and t.stats.batch == 1
        assert t.stats.median_ms == pytest.approx({"a": 1, "b": 2, "c": 3}[k])
        assert t.other_cpu_frac is not None and 0 <= t.other_cpu_frac <= 1 and t.host_load is not None


def test_a_busy_host_is_measured_flagged_and_refused_with_quiet_host(tiny_model, tmp_path) -> None:
    """A CPU hog on the test's own cores: every slot timed under it reports the others' CPU share and is busy;
    the row the bench would write is flagged in the report; --quiet-host refuses in one line."""
    import tvm

    from harness.lower import lower_float

    ex = tvm.compile(lower_float(tiny_model, (1, 8, 8), 1), target=tvm.target.Target({"kind": "llvm"}))
    lib = tmp_path / "fp32.so"
    ex.export_library(str(lib))
    session = LocalSession(1, sensor=False)
    mod = session.load(lib)
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    proto = LatencyProtocol(warmup=1, number=2, repeat=2, rounds=2)
    with cpu_hog():
        load = sample_load(session.system, local=True)
        timed = timing_phase({"a": (mod, x), "b": (mod, x)}, proto, session.system, True)
        with pytest.raises(BusyHost, match=r"--quiet-host: other processes still used \d+%"):
            wait_for_quiet(session.system, True, max_wait_s=1.0, log=lambda m: None)
    assert load.busy and load.other_cpu_frac > BUSY_FRAC
    for t in timed.values():
        assert t.busy and t.other_cpu_frac > BUSY_FRAC
    row = {"measured_as": "native", "busy_host": "busy: other processes used up to 95% of the CPUs while timing "
                                                 "(load average up to 3.1)"}
    assert any("BUSY host" in w and "95%" in w for w in row_warnings(row))
    assert not any("BUSY" in w for w in row_warnings({"measured_as": "native", "busy_host": ""}))


def test_stage_clock_records_each_stages_own_peak_memory() -> None:
    """A stage that allocates shows its peak; the next, which does not, shows less (the mark was reset)."""
    import numpy as np

    from harness.stages import StageClock, reset_peak

    clock = StageClock()
    with clock.time("run", "big"):
        a = np.ones(200 * 1024 * 1024 // 8)  # 200 MiB, touched
        del a
    with clock.time("run", "small"):
        np.ones(1024).sum()
    big, small = clock.peak_mib["run"]["big"], clock.peak_mib["run"]["small"]
    assert big >= 190, big
    if reset_peak():  # Linux: the high-water mark is per stage
        assert small < big - 150, (small, big)


def test_calls_per_repeat_shrinks_only_for_slow_calls() -> None:
    from harness.timing import MIN_REPEAT_S, calls_per_repeat

    assert calls_per_repeat(1e-4, 10) == 10  # sub-millisecond: the protocol's number
    assert calls_per_repeat(0.02, 10) == 3  # 3 × 20 ms reach 50 ms
    assert calls_per_repeat(1.0, 10) == 1  # a 1 s call is timed alone
    assert calls_per_repeat(MIN_REPEAT_S / 4, 2) == 2  # never above what was asked


def test_outputs_mixed_runs_a_small_remainder_at_the_small_batch() -> None:
    from harness.measure import outputs_mixed

    calls: list[int] = []

    class Mod:
        def __init__(self, batch: int) -> None:
            self.batch = batch

        def run(self, x: np.ndarray) -> np.ndarray:
            assert len(x) == self.batch
            calls.append(self.batch)
            return x.reshape(len(x), -1)[:, :1] * 2

    mods = {1: Mod(1), 8: Mod(8)}
    x = np.arange(19, dtype=np.float32).reshape(19, 1)
    out = outputs_mixed(mods, x, {1: 0.01, 8: 0.2})  # a large call costs 20 small ones: 3 left -> 3 small calls
    assert out.ravel().tolist() == (2 * x).ravel().tolist() and calls == [8, 8, 1, 1, 1]
    calls.clear()
    outputs_mixed(mods, x, {1: 0.1, 8: 0.2})  # 3 small calls (0.3 s) cost more than one padded large (0.2 s)
    assert calls == [8, 8, 8]


def test_interleaved_reverses_the_order_and_per_call_ms_warms_each_slot() -> None:
    """The benchmarks' one side-by-side loop (harness.measure): every contender once a round, the order
    reversed every other round; a plain callable's timer makes one untimed call before its timed ones."""
    from harness.measure import interleaved, per_call_ms

    seen: list[str] = []
    out = interleaved({k: (lambda k=k: seen.append(k) or 1.0) for k in "abc"}, rounds=3)
    assert seen == list("abc" "cba" "abc") and out == {k: [1.0] * 3 for k in "abc"}

    calls = []
    timer = per_call_ms(lambda: calls.append(1), min_round_ms=0, settle_ms=0)
    assert len(calls) == 2  # a warm-up call and one that sizes the inner loop (one call: min_round_ms=0)
    assert timer() >= 0 and len(calls) == 4  # one untimed call, then the timed one
