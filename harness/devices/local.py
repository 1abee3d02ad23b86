"""The machine running the harness itself."""

from __future__ import annotations

import platform
from pathlib import Path

import tvm
from tvm import relax

from harness.devices.base import DeviceError, LoadedModule


class LocalSession:
    """Loads artefacts into this process; thread count set on TVM's runtime pool."""

    measured_as = "native"

    def __init__(self, threads: int, expect_arch: str = "") -> None:
        if expect_arch and expect_arch != platform.machine():
            raise DeviceError(f"this machine is {platform.machine()}, the target wants {expect_arch}: "
                              "use an rpc/tracker/emulated device for it")
        tvm.get_global_func("runtime.config_threadpool")(1, threads)
        self.where = f"local {platform.machine()}"
        self.info = {"device_arch": platform.machine(), "device_tvm": tvm.__version__}

    def load(self, path: Path) -> LoadedModule:
        try:
            lib = tvm.runtime.load_module(str(path))
        except Exception as e:
            raise DeviceError(f"cannot load {path} here (built for another architecture?): "
                              f"{str(e).splitlines()[0]}") from e
        dev = tvm.cpu()
        return LoadedModule(relax.VirtualMachine(lib, dev), dev, self.where)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
