"""The machine running the harness itself."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import tvm
from tvm import relax

from harness.devices.base import DeviceError, LoadedModule, SessionBase

# ELF e_machine values of the architectures a target file can name (``uname -m`` spelling).
_ELF_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64", 21: "ppc64", 22: "s390x"}
# `uname -m` spellings of the same architectures, so that e.g. an armv7l host matches an "arm" library.
_HOST_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv6l": "arm", "armv7l": "arm", "armv8l": "arm",
                 "i486": "i386", "i586": "i386", "i686": "i386", "ppc64le": "ppc64"}


def elf_machine(path: Path) -> str | None:
    """The architecture an ELF library was built for (``uname -m`` spelling), or None if unknown.

    Why: loading a library built for another CPU fails inside dlopen with a misleading message
    ("cannot open shared object file: No such file or directory" for a file that exists); reading
    the header first lets us name the real cause.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")


class LocalSession(SessionBase):
    """Loads artefacts into this process; thread count set on TVM's runtime pool.

    Threads: TVM sizes its pool once, when first used, at ``TVM_NUM_THREADS`` or else — on x86 — *half*
    the logical CPUs ("ignore hyper-threading"), so on a 2-core VM without SMT a 2-thread target
    silently ran on one thread. The pool is sized to the usable cores here unless the variable is set;
    ``runtime_threads`` says what the runtime really uses (a pool created earlier cannot grow).

    Energy: the CPU package's RAPL counter where Linux powercap exposes a readable one (whole package,
    idle included: an upper bound on the model's share), else no sensor and an empty column."""

    def __init__(self, threads: int, expect_arch: str = "", sensor: bool = True) -> None:
        if expect_arch and expect_arch != platform.machine():
            raise DeviceError(f"this machine is {platform.machine()}, the target wants {expect_arch}: "
                              "use an rpc/tracker/emulated device for it")
        from harness.devices.system import LocalSystem

        os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))  # read when the pool is made
        self.system = LocalSystem()
        self.system.config_threadpool(1, threads)  # TVM's default placement; --pin-threads re-binds later
        self.where = f"local {platform.machine()}"
        self.info = {"device_arch": platform.machine(), "device_tvm": tvm.__version__}
        if sensor:
            from harness.sensors import cpu_sensor

            self.sensor = cpu_sensor()
        self.info["energy_sensor"] = self.sensor.describe() if self.sensor else "none (no readable RAPL counter)"

    def load(self, path: Path) -> LoadedModule:
        built_for, here = elf_machine(Path(path)), platform.machine()
        if built_for is not None and built_for != _HOST_ALIASES.get(here, here):
            raise DeviceError(f"{path} was built for {built_for} and this machine is {here}, so it cannot run here; "
                              f"run it on the {built_for} device (target [device] kind rpc/tracker/emulated, or --rpc "
                              "host:port)")
        try:
            lib = tvm.runtime.load_module(str(path))
        except Exception as e:
            raise DeviceError(f"cannot load {path} here (built for another architecture?): "
                              f"{str(e).splitlines()[0]}") from e
        dev = tvm.cpu()
        return LoadedModule(relax.VirtualMachine(lib, dev), dev, self.where)
