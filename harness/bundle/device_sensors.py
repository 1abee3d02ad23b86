"""What the bundle runner reads about its device: emulation, identity, sensors. Standalone like the runner.

Copied into every bundle beside ``runner.py`` (stdlib only). Energy comes only from a real counter:
NVML on a GPU (energy counter, else board power sampled every 10 ms), RAPL on a CPU package; both are the
whole board / package during the window, idle included, as in :mod:`harness.sensors`. Thermal zones,
hwmon readings and the CPU governor/frequency are recorded as they are; nothing is estimated.
"""

# It runs on the device's own Python (3.8 or later): no zip(strict=).
# ruff: noqa: B905

from __future__ import annotations

import ctypes
import glob
import os
import platform
import socket
import sys
import threading
import time


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def emulation() -> str:
    """Every sign that this runs emulated, "; "-joined ("" when there is none). qemu user mode shows the host's
    /proc/cpuinfo to the emulated interpreter; full-system emulation is not recognised: set LAAQ_EMULATED=1."""
    why = []
    if os.environ.get("LAAQ_EMULATED") == "1":
        why.append("LAAQ_EMULATED=1")
    if os.environ.get("QEMU_CPU"):
        why.append(f"QEMU_CPU={os.environ['QEMU_CPU']}")
    machine, cpuinfo = platform.machine(), _read("/proc/cpuinfo")
    if machine in ("aarch64", "arm64", "armv7l", "armv8l", "riscv64") and any(
            v in cpuinfo for v in ("GenuineIntel", "AuthenticAMD", "HygonGenuine")):
        why.append(f"x86 /proc/cpuinfo under an {machine} interpreter")
    if machine in ("x86_64", "AMD64", "i686") and "CPU implementer" in cpuinfo:
        why.append(f"Arm /proc/cpuinfo under an {machine} interpreter")
    return "; ".join(why)


def describe_device() -> dict:
    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
            cpu = line.split(":", 1)[1].strip()
            break
    board = _read("/proc/device-tree/model").rstrip("\x00")
    return {"hostname": socket.gethostname(), "machine": platform.machine(), "cpu": cpu or platform.processor(),
            "board": board, "cores": os.cpu_count(), "os": platform.platform(), "python": sys.version.split()[0]}


def sensor_snapshot() -> dict:
    """Thermal zones (°C), hwmon temperatures (°C), power (W) and energy counters (J), CPU governor and
    frequency (MHz) — whatever this device exposes; nothing is estimated."""
    out: dict = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        t = _read(f"{zone}/temp")
        if t.lstrip("-").isdigit():
            out[f"thermal/{_read(f'{zone}/type') or os.path.basename(zone)}"] = int(t) / 1000
    for hw in sorted(glob.glob("/sys/class/hwmon/hwmon*")):
        name = _read(f"{hw}/name") or os.path.basename(hw)
        for f in sorted(glob.glob(f"{hw}/*_input")):
            kind, v = os.path.basename(f).split("_")[0], _read(f)
            scale = {"temp": 1e3, "power": 1e6, "energy": 1e6}.get(kind.rstrip("0123456789"))
            if scale and v.lstrip("-").isdigit():
                label = _read(f.replace("_input", "_label")) or kind
                out[f"hwmon/{name}/{label}"] = int(v) / scale
    gov = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if gov:
        out["cpu0/governor"] = gov
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if freq.isdigit():
        out["cpu0/freq_mhz"] = int(freq) / 1000
    return out


class Rapl:
    """CPU package energy (all packages) from Linux powercap, wrap-around handled."""

    def __init__(self) -> None:
        self.domains = []
        for d in sorted(glob.glob("/sys/class/powercap/intel-rapl:*")):
            if os.path.basename(d).count(":") == 1 and _read(f"{d}/energy_uj").isdigit():
                rng = _read(f"{d}/max_energy_range_uj")
                self.domains.append((f"{d}/energy_uj", int(rng) if rng.isdigit() else 2**32))
        self.name = f"RAPL powercap, {len(self.domains)} package domain(s)"

    def read(self) -> list:
        return [int(_read(p)) for p, _ in self.domains]

    def window(self, fn) -> float:
        e0 = self.read()
        fn()
        e1 = self.read()
        return sum((b - a) if b >= a else (b + rng - a) for a, b, (_, rng) in zip(e0, e1, self.domains)) / 1e6


class Nvml:
    """GPU 0's board energy through NVML (pynvml if importable, else the driver's libnvidia-ml)."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self.h = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.power = lambda: pynvml.nvmlDeviceGetPowerUsage(self.h) / 1e3
            self.counter = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(self.h) / 1e3
            self.name = "NVML (pynvml)"
        except Exception:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            if (getattr(lib, "nvmlInit_v2", None) or lib.nvmlInit)() != 0:
                raise OSError("nvmlInit failed") from None
            self.h = ctypes.c_void_p()
            lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(0), ctypes.byref(self.h))

            def power() -> float:
                v = ctypes.c_uint()
                if lib.nvmlDeviceGetPowerUsage(self.h, ctypes.byref(v)) != 0:
                    raise OSError("nvmlDeviceGetPowerUsage failed")
                return v.value / 1e3

            def counter() -> float:
                v = ctypes.c_ulonglong()
                if lib.nvmlDeviceGetTotalEnergyConsumption(self.h, ctypes.byref(v)) != 0:
                    raise OSError("nvmlDeviceGetTotalEnergyConsumption failed")
                return v.value / 1e3

            self.power, self.counter, self.name = power, counter, "NVML (libnvidia-ml)"
        self.power()

    def window(self, fn) -> float:
        """Joules over ``fn()``: the energy counter where it exists, else power sampled every 10 ms."""
        samples, stop = [], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter(), self.power()))
                stop.wait(0.01)

        try:
            e0 = self.counter()
        except Exception:
            e0 = None
        t0 = time.perf_counter()
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        fn()
        t1 = time.perf_counter()
        e1 = self.counter() if e0 is not None else None
        stop.set()
        th.join(2)
        if e0 is not None and e1 is not None and e1 >= e0:
            return e1 - e0
        pts = [(t0, samples[0][1]), *samples, (t1, samples[-1][1])] if samples else []
        return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:]))


def energy_sensor(gpu: bool):
    """NVML for a GPU bundle, RAPL for a CPU one; (sensor or None, description)."""
    try:
        s = Nvml() if gpu else Rapl()
        if not gpu and not s.domains:
            return None, "none (no readable RAPL counter under /sys/class/powercap)"
        return s, s.name
    except Exception as e:  # no driver, no pynvml, no permission: no sensor, never an estimate
        return None, f"none ({type(e).__name__}: {e})"
