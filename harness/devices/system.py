"""What a device's operating system says about the conditions of a measurement, and its thread pinning.

Why: a latency figure is only comparable with another when the clock, the temperature and the
thread placement are known (a Raspberry Pi 4 loses tens of percent within seconds once it throttles).
TFLite's ``benchmark_model`` and MLPerf users record these beside the figure; so do we, where the
device exposes them, and leave the field empty where it does not — never a zero, never a guess.

A device is reached through a :class:`System`: :class:`LocalSystem` reads this machine's files (under
a ``root``, so a test can point it at an empty folder), :class:`RemoteSystem` reads a board's files
through TVM's RPC server itself (``tvm.rpc.server.download`` accepts an absolute path, so nothing is
installed on the board). That download sizes a file by seeking to its end, which works for sysfs
(4,096 bytes, NUL-padded: stripped here) but not for procfs (size 0): a remote process's memory
(``/proc/self/status``) is therefore not readable and its columns stay empty.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import tvm

# Raspberry Pi firmware's throttling word (vcgencmd get_throttled): bits 0-3 are "now" (under-voltage,
# ARM clock capped, throttled, soft temperature limit), bits 16-19 the same "since boot".
THROTTLED_PATH = "/sys/devices/platform/soc/soc:firmware/get_throttled"
THROTTLED_NOW, THROTTLED_SINCE_BOOT = 0xF, 0xF0000
_CPUFREQ = "/sys/devices/system/cpu/cpu{}/cpufreq/{}"
_THERMAL = "/sys/class/thermal/thermal_zone{}/{}"
_MAX_CPUS, _MAX_ZONES = 256, 64
# TVM's runtime.config_threadpool affinity mode: one named core per worker thread (threading_backend.h).
SPECIFY_ONE_CORE_PER_THREAD = -2


class System(Protocol):
    """A device's files and its TVM runtime's thread pool."""

    where: str

    def read(self, path: str) -> str | None:
        """The text of an absolute path on the device, or None when absent or unreadable."""
        ...

    def write(self, path: str, text: str) -> bool:
        """Write a file on the device; False when it cannot (never raises)."""
        ...

    def config_threadpool(self, mode: int, nthreads: int, cpus: tuple[int, ...] = ()) -> None: ...

    def num_threads(self) -> int | None:
        """The threads the device's TVM runtime really uses (``runtime.NumThreads``), None if it cannot say."""
        ...


@dataclass
class LocalSystem:
    """This machine; ``root`` prefixes every path (``/`` normally, a temporary folder in tests)."""

    root: Path = Path("/")
    where: str = "this machine"

    def _path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read(self, path: str) -> str | None:
        try:
            return self._path(path).read_text(errors="replace")
        except OSError:
            return None

    def write(self, path: str, text: str) -> bool:
        try:
            with open(self._path(path), "w") as f:  # not atomic on purpose: procfs files are written in place
                f.write(text)
            return True
        except OSError:
            return False

    def config_threadpool(self, mode: int, nthreads: int, cpus: tuple[int, ...] = ()) -> None:
        f = tvm.get_global_func("runtime.config_threadpool")
        f(mode, nthreads, [str(c) for c in cpus]) if cpus else f(mode, nthreads)

    def num_threads(self) -> int | None:
        return int(tvm.get_global_func("runtime.NumThreads")())


@dataclass
class RemoteSystem:
    """A board behind TVM RPC; files come through the server's own download function."""

    remote: Any
    where: str = "the RPC device"

    def read(self, path: str) -> str | None:
        try:
            data = bytes(self.remote.download(path))
        except Exception:  # absent file, procfs (see the module docstring), or a server without download
            return None
        return data.rstrip(b"\0").decode(errors="replace")

    def write(self, path: str, text: str) -> bool:
        return False  # never written: a harness has no business changing a board's files

    def config_threadpool(self, mode: int, nthreads: int, cpus: tuple[int, ...] = ()) -> None:
        f = self.remote.get_function("runtime.config_threadpool")
        if not cpus:
            f(mode, nthreads)
            return
        # an Array cannot cross TVM's RPC protocol as an argument; built on the device, it is passed by reference
        f(mode, nthreads, self.remote.get_function("ffi.Array")(*(str(c) for c in cpus)))

    def num_threads(self) -> int | None:
        try:
            return int(self.remote.get_function("runtime.NumThreads")())
        except Exception:  # an older server without it: the column keeps the target's figure
            return None


@dataclass(frozen=True)
class DeviceState:
    """Clock, temperature and throttling at one moment; None where the device does not say."""

    governor: str | None = None  # cpu0's cpufreq scaling_governor
    freq_mhz: float | None = None  # mean scaling_cur_freq over the CPUs that report one
    temp_c: float | None = None  # hottest thermal zone
    throttled: int | None = None  # Raspberry Pi firmware's get_throttled word

    def readable(self) -> str:
        """Which fields this device exposes (for run.json)."""
        names = {"governor": self.governor, "frequency": self.freq_mhz, "temperature": self.temp_c,
                 "throttling flag": self.throttled}
        return "; ".join(f"{k}: {'readable' if v is not None else 'not exposed'}" for k, v in names.items())


def _number(text: str | None) -> float | None:
    try:
        return float(text.strip()) if text is not None else None
    except ValueError:
        return None


def read_state(system: System | None) -> DeviceState:
    """The device's state now. Indices are probed until the first gap (a remote board cannot list folders)."""
    if system is None:
        return DeviceState()
    gov = system.read(_CPUFREQ.format(0, "scaling_governor"))
    freqs = []
    for cpu in range(_MAX_CPUS):
        khz = _number(system.read(_CPUFREQ.format(cpu, "scaling_cur_freq")))
        if khz is None:
            break
        freqs.append(khz / 1e3)
    temps = []
    for zone in range(_MAX_ZONES):
        if system.read(_THERMAL.format(zone, "type")) is None:
            break
        milli = _number(system.read(_THERMAL.format(zone, "temp")))  # some zones answer EIO/ENODATA when off
        if milli is not None:
            temps.append(milli / 1e3)
    raw = system.read(THROTTLED_PATH)
    try:
        throttled = int(raw.strip(), 16) if raw is not None and raw.strip() else None
    except ValueError:
        throttled = None
    governor = (gov or "").strip() or None
    return DeviceState(governor, round(sum(freqs) / len(freqs), 1) if freqs else None,
                       round(max(temps), 1) if temps else None, throttled)


@dataclass(frozen=True)
class PeakMemory:
    """The process's resident-set high-water mark over a window, and its rise over the resident set at the start."""

    peak_mb: float
    delta_mb: float


class MemoryWindow:
    """Linux's VmHWM reset (``echo 5 > /proc/self/clear_refs``) at ``start``, read at ``stop``.

    Only where both the reset and the read work: without the reset VmHWM is the lifetime peak (the
    attack's PyTorch tensors included), which would be a wrong answer, so the window is then empty."""

    def __init__(self, system: System | None) -> None:
        self.system = system
        self.rss0: float | None = None

    def _status(self, key: str) -> float | None:
        text = self.system.read("/proc/self/status") if self.system is not None else None
        m = re.search(rf"^{key}:\s+(\d+)\s*kB", text or "", re.MULTILINE)
        return int(m.group(1)) / 1024 if m else None

    def start(self) -> None:
        ok = self.system is not None and self.system.write("/proc/self/clear_refs", "5")
        self.rss0 = self._status("VmRSS") if ok else None

    def stop(self) -> PeakMemory | None:
        peak = self._status("VmHWM") if self.rss0 is not None else None
        if peak is None or self.rss0 is None:
            return None
        return PeakMemory(round(peak, 1), round(max(0.0, peak - self.rss0), 1))


def describe_memory(system: System | None) -> str:
    """What ``rss_peak_mb``/``rss_delta_mb`` hold on this device (for run.json)."""
    window = MemoryWindow(system)
    window.start()
    if window.rss0 is not None:
        return ("VmHWM of the harness process (Python, torch and TVM together) over loading a variant and one call "
                "at each batch size, reset through /proc/self/clear_refs; delta: over the resident set before loading")
    return "not readable here (no device, or a remote process: TVM's RPC download cannot fetch its /proc)"


def state_record(system: System | None) -> dict[str, Any]:
    """run.json's record of the device's conditions when the session opened (``at_end`` is added later)."""
    state = read_state(system)
    return {"at_open": asdict(state), "exposed": state.readable() if system else "nothing (no device)",
            "memory": describe_memory(system), "runtime_threads": runtime_threads(system, 0) or None}


def runtime_threads(system: System | None, default: int) -> int:
    """Threads the device's runtime really uses, else ``default`` (TVM may clamp what was asked: see LocalSession)."""
    return (system.num_threads() if system is not None else None) or default


def parse_pin(spec: str) -> tuple[int, ...] | None:
    """``--pin-threads``: "" → () (TVM's default placement), "auto" → None (cores 0..threads-1, resolved by
    :func:`pin_cpus`), "2,3" → those cores. Anything else is refused with one line."""
    if spec in ("", "auto"):
        return () if not spec else None
    try:
        cpus = tuple(int(c) for c in spec.split(","))
    except ValueError:
        cpus = ()
    if not cpus or min(cpus) < 0 or len(set(cpus)) != len(cpus):
        raise ValueError(f"--pin-threads {spec!r}: give 'auto' or distinct core numbers, e.g. 0,1")
    return cpus


def pin_cpus(spec: str, threads: int) -> tuple[int, ...]:
    """The cores ``spec`` names for a runtime of ``threads`` threads: one core per thread."""
    cpus = parse_pin(spec)
    if cpus is None:
        return tuple(range(threads))
    if cpus and len(cpus) != threads:
        raise ValueError(f"--pin-threads {spec!r} names {len(cpus)} core(s) but the target runs {threads} runtime "
                         "thread(s): name one core per thread")
    return cpus


def cpu_list(text: str | None) -> set[int] | None:
    """A kernel CPU list ("0-3,5") as a set, or None when absent or malformed."""
    try:
        cores: set[int] = set()
        for part in (text or "").strip().split(","):
            lo, _, hi = part.partition("-")
            cores.update(range(int(lo), int(hi or lo) + 1))
        return cores or None
    except ValueError:
        return None


def online_cpus(system: System | None) -> set[int] | None:
    """The device's online cores (``/sys/devices/system/cpu/online``), or None when unreadable."""
    return cpu_list(system.read("/sys/devices/system/cpu/online") if system is not None else None)


def pin_threads(system: System | None, cpus: tuple[int, ...]) -> None:
    """Bind the runtime's worker threads one per core of ``cpus`` (TVM's kSpecifyOneCorePerThread; the
    calling thread may use any of them). Nothing to do for ``()``: the session keeps TVM's own placement.
    A core the device does not have is refused here (TVM would silently leave that thread unbound)."""
    if not cpus or system is None:
        return
    online = online_cpus(system)
    if online is not None and not set(cpus) <= online:
        raise ValueError(f"--pin-threads: core(s) {sorted(set(cpus) - online)} are not online on {system.where} "
                         f"(online: {sorted(online)}); name existing cores or lower the target's threads")
    system.config_threadpool(SPECIFY_ONE_CORE_PER_THREAD, len(cpus), cpus)
