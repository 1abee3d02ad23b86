"""Measured energy from real sensors — optional, detected, never faked.

A :class:`Sensor` integrates the energy a device draws between ``start()`` and ``stop()``.
Two implementations:

* :class:`NvmlSensor` — an NVIDIA GPU's board power through NVML (``pynvml`` from the
  ``nvidia-ml-py`` package when installed, else ``libnvidia-ml.so.1`` through ctypes, which every
  NVIDIA driver ships). It reads the driver's cumulative energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer) where it exists, and *also* samples
  board power in a background thread (``nvmlDeviceGetPowerUsage``), integrated with the trapezoid
  rule; the counter is preferred, the samples are the fallback and a cross-check.
* :class:`RaplSensor` — CPU package energy from Linux powercap (``/sys/class/powercap/intel-rapl:N``,
  also used by AMD's RAPL driver), wrap-around handled.

Both say ``available() == False`` where the sensor is absent or unreadable, and :func:`gpu_sensor`
/ :func:`cpu_sensor` then return ``None``: callers leave ``energy_measured_uj`` empty. What is
measured is the *whole* board's / package's energy during the window (idle and static power
included), divided by the inferences run in it — an upper bound on the model's own share,
reported beside the proxy, never instead of it.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from harness.devices.base import Session


@runtime_checkable
class Sensor(Protocol):
    name: str

    def available(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> float | None:
        """Joules since ``start()``, or None when the reading failed."""
        ...

    def describe(self) -> str: ...


@dataclass
class Reading:
    """What the last ``start()``/``stop()`` window saw (for reports and sanity checks)."""

    joules: float | None = None
    seconds: float = 0.0
    method: str = ""
    samples: int = 0
    mean_w: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# NVML
# --------------------------------------------------------------------------------------------
class _NvmlApi:
    """The five NVML calls we need, via pynvml if importable, else ctypes on the driver's library."""

    def __init__(self) -> None:
        self.kind = ""
        self._lib: Any = None
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self._py, self.kind = pynvml, "pynvml"
            return
        except Exception:  # not installed, or no driver: try the C library directly
            self._py = None
        for name in ("libnvidia-ml.so.1", "libnvidia-ml.so"):
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            init = getattr(lib, "nvmlInit_v2", None) or lib.nvmlInit
            if init() != 0:
                raise OSError("nvmlInit failed")
            self._lib, self.kind = lib, "ctypes libnvidia-ml"
            return
        raise OSError("NVML not found (no nvidia-ml-py, no libnvidia-ml.so.1)")

    def handle(self, index: int) -> Any:
        if self._py:
            return self._py.nvmlDeviceGetHandleByIndex(index)
        h = ctypes.c_void_p()
        fn = getattr(self._lib, "nvmlDeviceGetHandleByIndex_v2", None) or self._lib.nvmlDeviceGetHandleByIndex
        if fn(ctypes.c_uint(index), ctypes.byref(h)) != 0:
            raise OSError(f"no NVML device {index}")
        return h

    def power_mw(self, h: Any) -> int:
        if self._py:
            return int(self._py.nvmlDeviceGetPowerUsage(h))
        v = ctypes.c_uint()
        if self._lib.nvmlDeviceGetPowerUsage(h, ctypes.byref(v)) != 0:
            raise OSError("nvmlDeviceGetPowerUsage failed")
        return int(v.value)

    def energy_mj(self, h: Any) -> int:
        if self._py:
            return int(self._py.nvmlDeviceGetTotalEnergyConsumption(h))
        v = ctypes.c_ulonglong()
        if self._lib.nvmlDeviceGetTotalEnergyConsumption(h, ctypes.byref(v)) != 0:
            raise OSError("nvmlDeviceGetTotalEnergyConsumption failed")
        return int(v.value)

    def name(self, h: Any) -> str:
        if self._py:
            n = self._py.nvmlDeviceGetName(h)
            return n.decode() if isinstance(n, bytes) else str(n)
        buf = ctypes.create_string_buffer(96)
        if self._lib.nvmlDeviceGetName(h, buf, ctypes.c_uint(96)) != 0:
            return "unknown"
        return buf.value.decode(errors="replace")


def _nvml_index(cuda_index: int) -> int:
    """NVML counts all GPUs; CUDA counts the visible ones. Map through CUDA_VISIBLE_DEVICES when it
    lists plain indices (UUID lists are not mapped: then index 0 is assumed, and said in describe())."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not vis:
        return cuda_index
    parts = [p.strip() for p in vis.split(",") if p.strip()]
    if cuda_index < len(parts) and parts[cuda_index].isdigit():
        return int(parts[cuda_index])
    return cuda_index


class NvmlSensor:
    """Board energy of one NVIDIA GPU during a window (energy counter, else sampled power)."""

    name = "nvml"

    def __init__(self, cuda_index: int = 0, interval_s: float = 0.01) -> None:
        self.cuda_index = cuda_index
        self.index = _nvml_index(cuda_index)
        self.interval_s = interval_s
        self.last = Reading()
        self.error = ""
        self._api: _NvmlApi | None = None
        self._h: Any = None
        self._has_counter = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._samples: list[tuple[float, float]] = []
        try:
            self._api = _NvmlApi()
            self._h = self._api.handle(self.index)
            self._api.power_mw(self._h)  # the sensor must answer at least this
            try:
                self._api.energy_mj(self._h)
                self._has_counter = True
            except Exception:
                self._has_counter = False
        except Exception as e:  # noqa: BLE001 - any failure means "no sensor here"
            self.error = f"{type(e).__name__}: {e}"
            self._api = None

    def available(self) -> bool:
        return self._api is not None

    def describe(self) -> str:
        if not self.available():
            return f"NVML unavailable ({self.error})"
        how = "total-energy counter (sampled power as cross-check)" if self._has_counter else \
            f"board power sampled every {self.interval_s * 1e3:.0f} ms, trapezoid-integrated"
        return f"NVML ({self._api.kind}) GPU {self.index} {self._api.name(self._h)}: {how}"

    def _sample(self) -> None:
        assert self._api is not None
        while not self._stop.is_set():
            try:
                self._samples.append((time.perf_counter(), self._api.power_mw(self._h) / 1e3))
            except Exception:  # noqa: BLE001 - a missed sample is simply missing
                pass
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        if not self.available():
            return
        assert self._api is not None
        self._samples = []
        self._stop.clear()
        self._e0 = self._api.energy_mj(self._h) if self._has_counter else None
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> float | None:
        if not self.available() or self._thread is None:
            return None
        assert self._api is not None
        e1 = self._api.energy_mj(self._h) if self._has_counter else None
        t1 = time.perf_counter()
        self._stop.set()
        self._thread.join(timeout=2)
        self._thread = None
        seconds = t1 - self._t0
        s = [p for p in self._samples if p[0] <= t1]
        sampled = _trapezoid(s, self._t0, t1)
        mean_w = (sampled / seconds) if sampled is not None and seconds > 0 else None
        if e1 is not None and self._e0 is not None and e1 >= self._e0:
            joules, method = (e1 - self._e0) / 1e3, "nvml energy counter"
        else:
            joules, method = sampled, "nvml sampled power"
        self.last = Reading(joules, seconds, method, len(s), mean_w, {"sampled_j": sampled})
        return joules


def _trapezoid(samples: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    """∫P dt over [t0, t1] from (time, watts) samples; the first/last value held to the window's edges."""
    if not samples:
        return None
    pts = [(t0, samples[0][1]), *samples, (t1, samples[-1][1])]
    return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:], strict=False) if b[0] >= a[0])


# --------------------------------------------------------------------------------------------
# RAPL
# --------------------------------------------------------------------------------------------
POWERCAP = Path("/sys/class/powercap")


class RaplSensor:
    """CPU package energy (all packages summed) from Linux powercap; needs read access to energy_uj."""

    name = "rapl"

    def __init__(self, root: Path = POWERCAP) -> None:
        self.domains: list[tuple[Path, int]] = []
        self.error = ""
        self.last = Reading()
        try:
            for d in sorted(root.glob("intel-rapl:*")):
                if d.name.count(":") != 1:  # packages only (intel-rapl:0), not sub-zones (intel-rapl:0:0)
                    continue
                e = d / "energy_uj"
                int(e.read_text())
                rng = d / "max_energy_range_uj"
                self.domains.append((e, int(rng.read_text()) if rng.exists() else 2**32))
        except OSError as e:
            self.error = f"{e.strerror or e} ({getattr(e, 'filename', '')})"
            self.domains = []
        if not self.domains and not self.error:
            self.error = f"no RAPL package domains under {root}"

    def available(self) -> bool:
        return bool(self.domains)

    def describe(self) -> str:
        if not self.available():
            return f"RAPL unavailable ({self.error})"
        names = ", ".join(p.parent.name for p, _ in self.domains)
        return f"RAPL powercap, {len(self.domains)} package domain(s): {names}"

    def _read(self) -> list[int]:
        return [int(p.read_text()) for p, _ in self.domains]

    def start(self) -> None:
        if self.available():
            self._t0, self._e0 = time.perf_counter(), self._read()

    def stop(self) -> float | None:
        if not self.available() or not hasattr(self, "_e0"):
            return None
        try:
            e1 = self._read()
        except OSError:
            return None
        seconds = time.perf_counter() - self._t0
        pairs = zip(self._e0, e1, self.domains, strict=True)
        uj = sum((b - a) if b >= a else (b + rng - a) for a, b, (_, rng) in pairs)  # counters wrap at rng
        self.last = Reading(uj / 1e6, seconds, "rapl energy counter", 2, uj / 1e6 / seconds if seconds > 0 else None)
        return uj / 1e6


# --------------------------------------------------------------------------------------------
def gpu_sensor(cuda_index: int = 0) -> NvmlSensor | None:
    s = NvmlSensor(cuda_index)
    return s if s.available() else None


def cpu_sensor() -> RaplSensor | None:
    s = RaplSensor()
    return s if s.available() else None


def energy_per_sample_uj(sensor: Sensor | None, run_window, calls_per_window: int, batch: int) -> float | str:
    """Run ``run_window()`` (``calls_per_window`` inferences of ``batch`` samples each) between
    ``sensor.start()`` and ``sensor.stop()``; µJ per sample, or ``""`` when there is no reading."""
    if sensor is None or not sensor.available():
        return ""
    sensor.start()
    try:
        run_window()
    finally:
        joules = sensor.stop()
    if joules is None or not math.isfinite(joules) or joules <= 0:
        return ""
    return round(joules / (calls_per_window * batch) * 1e6, 4)


def measured_energy_uj(session: Session, mod: Any, x: Any, median_ms: float, min_window_s: float = 1.0) -> float | str:
    """Energy per sample of a loaded module, from the session's sensor (``session.sensor``; absent
    → ``""``), over one timed window of at least ``min_window_s`` (power sensors update every
    few to 100 ms, so the window must be long; the call count comes from the measured latency)."""
    sensor = session.sensor
    if sensor is None or not median_ms or median_ms <= 0:
        return ""
    calls = max(10, math.ceil(min_window_s * 1e3 / median_ms))
    return energy_per_sample_uj(sensor, lambda: mod.time(x, 0, calls, 1), calls, int(x.shape[0]))
