"""The measurement protocol: cool-down and thread pinning reach TVM's runtime, p99 comes from the repeats,
and the device's conditions (clock, temperature, throttling, memory) are read where exposed — locally from
/sys and /proc, over RPC through the server's own download — and left empty, never zero, where not.

A real compiled module is timed (no TVM mocked); only the arguments handed to ``time_evaluator`` are
recorded on the way. The RPC cases run against TVM's own server on 127.0.0.1, every wait bounded.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import tvm
from click.testing import CliRunner
from tvm import relax, rpc

from harness.cli import main
from harness.devices.local import LocalSession
from harness.devices.rpc import RPCSession
from harness.devices.system import (
    DeviceState,
    LocalSystem,
    MemoryWindow,
    RemoteSystem,
    cpu_list,
    online_cpus,
    pin_cpus,
    pin_threads,
    read_state,
)
from harness.measure import LatencyProtocol, latency, stats
from harness.rows import COLUMNS, conditions_columns

CONDITIONS = ["governor", "freq_mhz_before", "freq_mhz_after", "temp_c_before", "temp_c_after", "throttled_before",
              "throttled_after", "rss_peak_mb", "rss_delta_mb"]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real Relax library (a 64x64 matmul, parallel over rows) exported for this machine."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((64, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.matmul(x, x)))
        bb.emit_func_output(out)
    path = tmp_path_factory.mktemp("lib") / "matmul.so"
    tvm.compile(bb.get(), "llvm").export_library(str(path))
    return path


X = np.random.default_rng(0).random((64, 64), dtype=np.float32)


def _record_time_evaluator(mod) -> list[dict]:
    """Wrap the module's real ``time_evaluator`` so the arguments it gets are kept (it still times)."""
    calls: list[dict] = []
    real = mod.vm.time_evaluator

    def recording(name, dev, **kw):
        calls.append(kw)
        return real(name, dev, **kw)

    mod.vm.time_evaluator = recording
    return calls


@pytest.fixture
def rpc_server(monkeypatch: pytest.MonkeyPatch):
    """TVM's RPC server on 127.0.0.1, its pool sized to two threads as a board's would be (on x86 TVM would
    otherwise take half the logical CPUs: one on a 2-core VM, and there would be no worker thread to bind)."""
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = rpc.Server("127.0.0.1", port=port, port_end=port + 1, silent=True)
    yield server
    server.terminate()


# --- percentiles --------------------------------------------------------------------------------------------


def test_p99_from_the_repeats() -> None:
    """20 repeats of 1..20 ms: p99 interpolates 81 % of the way from the 19th to the 20th — the worst repeat."""
    s = stats(4, [ms / 1e3 for ms in range(20, 0, -1)])
    assert s.median_ms == pytest.approx(10.5) and s.p90_ms == pytest.approx(18.1)
    assert s.p99_ms == pytest.approx(19.81)
    assert s.throughput == pytest.approx(4 / 10.5e-3)
    one = stats(1, [2e-3])
    assert one.p99_ms == one.p90_ms == one.median_ms == pytest.approx(2.0) and one.std_ms == 0.0


# --- cool-down and pinning reach the runtime ----------------------------------------------------------------


def test_cooldown_reaches_time_evaluator(library: Path) -> None:
    mod = LocalSession(1, sensor=False).load(library)
    calls = _record_time_evaluator(mod)
    s = latency(mod, X, LatencyProtocol(warmup=1, number=2, repeat=3, cooldown_ms=5, cooldown_every=2))
    assert calls == [{"number": 2, "repeat": 3, "cooldown_interval_ms": 5, "repeats_to_cooldown": 2}]
    assert s.median_ms > 0 and s.p99_ms >= s.p90_ms >= s.median_ms
    latency(mod, X, LatencyProtocol(1, 2, 3))
    assert calls[-1]["cooldown_interval_ms"] == 0 and calls[-1]["repeats_to_cooldown"] == 1, "default: no pause"


def _affinities(pids: list[int]) -> list[set[int]]:
    """Cpus_allowed of every thread of the given processes."""
    out = []
    for pid in pids:
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            try:
                text = status.read_text()
            except OSError:  # the thread ended meanwhile
                continue
            line = next(ln for ln in text.splitlines() if ln.startswith("Cpus_allowed_list:"))
            out.append(cpu_list(line.split(":", 1)[1]))
    return out


def _fake(root: Path, files: dict[str, str]) -> Path:
    """A file tree standing in for a device's / (its /sys and /proc)."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0),
                               reason="pinning is checked on cores 0 and 1")


@two_cores
def test_pinning_binds_the_local_runtime_threads(library: Path) -> None:
    """Cores (0,1) then (1,0): the runtime's worker thread follows the second named core (the calling thread
    may use both), as the kernel's own affinity lists show."""
    saved = os.sched_getaffinity(0)  # (asking TVM anything here would size its pool before the session does)
    session = LocalSession(2, sensor=False)
    assert session.system.num_threads() == 2, "the pool holds the target's threads (not half the CPUs, as on x86)"
    mod = session.load(library)
    try:
        for cpus, worker in (((0, 1), {1}), ((1, 0), {0})):
            pin_threads(session.system, cpus)
            mod.run(X)
            seen = _affinities([os.getpid()])
            assert os.sched_getaffinity(0) == {0, 1} and worker in seen, (cpus, seen)
        assert {1} not in _affinities([os.getpid()]), "re-pinning moved the worker off core 1"
    finally:
        session.system.config_threadpool(1, 2)  # TVM's default placement again, as every LocalSession sets it
        os.sched_setaffinity(0, saved)


@two_cores
def test_pinning_and_cooldown_reach_a_remote_runtime(library: Path, rpc_server) -> None:
    """Over RPC: the core list is built on the device (an Array cannot cross the protocol) and the server's
    worker thread is bound; the cool-down travels with the remote time_evaluator."""
    import psutil

    with RPCSession("127.0.0.1", rpc_server.port, 2, session_timeout_s=60, connect_timeout_s=10) as session:
        mod = session.load(library)
        server_pids = [p.pid for p in psutil.Process().children(recursive=True)]
        for cpus, worker in (((0, 1), {1}), ((1, 0), {0})):
            pin_threads(session.system, cpus)
            mod.run(X)
            assert worker in _affinities(server_pids), cpus
        assert {1} not in _affinities(server_pids)
        calls = _record_time_evaluator(mod)
        s = latency(mod, X, LatencyProtocol(0, 1, 2, cooldown_ms=3))
        assert calls[0]["cooldown_interval_ms"] == 3 and s.p99_ms >= s.median_ms > 0


def test_pin_specs(tmp_path: Path) -> None:
    assert pin_cpus("", 4) == () and pin_cpus("auto", 3) == (0, 1, 2) and pin_cpus("2,3", 2) == (2, 3)
    with pytest.raises(ValueError, match="names 3 core"):
        pin_cpus("0,1,2", 2)
    for bad in ("0,x", "-1", "1,1", ","):
        with pytest.raises(ValueError, match="--pin-threads"):
            LatencyProtocol(pin_threads=bad)
    with pytest.raises(ValueError, match="cool-down"):
        LatencyProtocol(cooldown_ms=-1)
    with pytest.raises(ValueError, match="not online"):
        pin_threads(LocalSystem(root=_fake(tmp_path, {"sys/devices/system/cpu/online": "0-1\n"})), (1, 2))
    assert cpu_list("0-2,5\n") == {0, 1, 2, 5} and cpu_list("") is None and cpu_list(None) is None
    text = LatencyProtocol(1, 2, 3, cooldown_ms=500, cooldown_every=4, pin_threads="auto").describe()
    assert "500 ms cool-down after every 4 repeat(s)" in text and "pinned one per core (auto)" in text
    assert "p99" in text and "no cool-down" in LatencyProtocol().describe()


def test_bad_protocol_options_stop_the_cli_before_any_work() -> None:
    for args, phrase in ((["--pin-threads", "0,x"], "--pin-threads"), (["--cooldown-ms", "-5"], "cool-down")):
        r = CliRunner().invoke(main, ["bench", "--target", "x86", *args])
        assert r.exit_code == 1 and phrase in r.output, r.output


# --- the device's conditions ----------------------------------------------------------------------------------


def test_sensors_absent_give_empty_columns_not_zeros(tmp_path: Path) -> None:
    system = LocalSystem(root=tmp_path)  # a machine exposing nothing at all
    state = read_state(system)
    assert state == DeviceState() and read_state(None) == DeviceState()
    window = MemoryWindow(system)
    window.start()
    cols = conditions_columns(state, read_state(system), window.stop())
    assert cols == dict.fromkeys(CONDITIONS, "") and set(CONDITIONS) <= set(COLUMNS)
    assert "not exposed" in state.readable() and "readable" not in state.readable().replace("not exposed", "")


def test_sensors_present_are_read_and_converted(tmp_path: Path) -> None:
    """A Raspberry-Pi-like tree: kHz → MHz (mean over cores), m°C → °C (hottest zone; a zone that cannot be
    read is skipped), the firmware's throttling word as hex; VmHWM after the reset, and its rise over VmRSS."""
    root = _fake(tmp_path, {
        "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": "ondemand\n",
        "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "1500000\n",
        "sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq": "600000\n",
        "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n", "sys/class/thermal/thermal_zone0/temp": "54321\n",
        "sys/class/thermal/thermal_zone1/type": "gpu\n", "sys/class/thermal/thermal_zone1/temp": "n/a\n",
        "sys/class/thermal/thermal_zone2/type": "x\n", "sys/class/thermal/thermal_zone2/temp": "48000\n",
        "sys/devices/platform/soc/soc:firmware/get_throttled": "50005\n",
        "proc/self/clear_refs": "", "proc/self/status": "Name:\tx\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n",
    })
    system = LocalSystem(root=root)
    state = read_state(system)
    assert state == DeviceState("ondemand", 1050.0, 54.3, 0x50005)
    window = MemoryWindow(system)
    window.start()
    assert (root / "proc/self/clear_refs").read_text() == "5", "the high-water mark is reset first"
    mem = window.stop()
    assert mem is not None and (mem.peak_mb, mem.delta_mb) == (200.0, 100.0)
    cols = conditions_columns(state, state, mem)
    assert cols["throttled_after"] == "0x50005" and cols["freq_mhz_before"] == 1050.0 and cols["temp_c_after"] == 54.3
    assert cols["governor"] == "ondemand" and cols["rss_peak_mb"] == 200.0


def test_memory_window_on_this_process() -> None:
    """The real VmHWM reset: 64 MB touched inside the window raise the peak by about that much."""
    window = MemoryWindow(LocalSystem())
    window.start()
    if window.rss0 is None:
        pytest.skip("/proc/self/clear_refs is not writable here: the memory columns stay empty")
    import mmap

    # fresh anonymous pages, every one written: a numpy block could come from memory the process already holds
    # (freed by an earlier test, still resident), which raised nothing (seen once on a full CI run)
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(b"\x01" * (64 * 2**20))
    mem = window.stop()
    block.close()
    assert mem is not None and mem.delta_mb >= 60 and mem.peak_mb >= window.rss0 + 60


def test_remote_files_come_through_the_rpc_server(rpc_server) -> None:
    """sysfs files read through the server equal the local reads (same machine); a missing file and procfs
    (size 0 to TVM's download) read as absent, so a remote process's memory stays empty."""
    remote = rpc.connect("127.0.0.1", rpc_server.port, session_timeout=60)
    system, local = RemoteSystem(remote), LocalSystem()
    online = "/sys/devices/system/cpu/online"
    assert system.read(online) == local.read(online) and system.read(online)
    assert system.read("/sys/no/such/file") is None and system.read("/proc/self/status") is None
    assert not system.write("/proc/self/clear_refs", "5")
    here, there = read_state(local), read_state(system)
    assert (there.governor, there.throttled) == (here.governor, here.throttled)
    assert (there.freq_mhz is None) == (here.freq_mhz is None) and (there.temp_c is None) == (here.temp_c is None)
    window = MemoryWindow(system)
    window.start()
    assert window.stop() is None
    assert online_cpus(system) == online_cpus(local)
