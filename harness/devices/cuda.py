"""NVIDIA GPUs: this machine's (``[device] kind = "cuda"``) or a remote one over RPC (``accelerator = "cuda"``).

The local session never pretends: ``available`` is ``tvm.cuda(index).exist``. Where it is false
(no GPU, no driver, or TVM's CUDA runtime could not load ``libcuda.so.1`` / ``libcudart.so.13``)
the session still opens, its ``measured_as`` is ``"not run: no CUDA device"`` and ``why_not``
says what is missing; the harness then compiles and verifies every variant and writes not-run
rows (``harness.rows.not_run_row``) instead of measurements.

Where a GPU exists: the VM runs on ``tvm.cuda(index)``; ``LoadedModule.time`` is TVM's
``time_evaluator`` on that device (it synchronizes the stream, so figures are kernel time plus
launch overhead, without host↔device copies); ``sensor`` is an NVML board-power sensor when
NVML answers (``harness.sensors``), else None.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from harness.backend.cuda import ensure_jit_compiler
from harness.devices.base import DeviceError, LoadedModule, SessionBase
from harness.devices.rpc import RPCSession

NOT_RUN = "not run: no CUDA device"


def cuda_runtime_problem() -> str:
    """Why TVM's CUDA runtime is not usable here, in one line (empty when it is)."""
    try:
        if tvm.cuda(0).exist:
            return ""
    except Exception as e:  # noqa: BLE001
        return f"tvm.cuda(0) failed: {e}"
    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if not lib.exists():
        return f"this TVM wheel has no CUDA runtime ({lib.name} missing)"
    for dep in ("libcuda.so.1", "libcudart.so.13"):
        try:
            ctypes.CDLL(dep)
        except OSError:
            what = ("the NVIDIA driver" if dep == "libcuda.so.1" else
                    "the CUDA 13 runtime (CUDA toolkit 13 or the nvidia-cuda-runtime wheel on LD_LIBRARY_PATH)")
            return f"{dep} not found: {what} is not installed or not on the loader path"
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return "no /dev/nvidia* device node: no GPU visible to this machine/container"
    return ("tvm.cuda(0).exist is false (CUDA driver present but no usable GPU; check nvidia-smi and "
            "CUDA_VISIBLE_DEVICES)")


def check_arch(dev: Any, target_arch: str) -> None:
    """A library for sm_XY runs on a GPU of that compute capability (SASS) or a newer one (its PTX)."""
    if not target_arch.startswith("sm_"):
        return
    want = int("".join(c for c in target_arch[3:] if c.isdigit()))
    have = int(str(dev.compute_version).replace(".", ""))
    if have < want:
        raise DeviceError(f"this GPU is compute capability {dev.compute_version}, the library is for {target_arch}: "
                          "choose a target with an arch at or below the GPU's")


class CudaSession(SessionBase):
    """This machine's GPU ``index``; ``available`` tells whether there is one."""

    def __init__(self, index: int = 0, target_arch: str = "", sensor: bool = True) -> None:
        self.index = index
        self.target_arch = target_arch
        self.why_not = cuda_runtime_problem() if index == 0 else ""
        self.dev = tvm.cuda(index)
        self.available = bool(self.dev.exist)
        if not self.available and not self.why_not:
            self.why_not = f"tvm.cuda({index}).exist is false"
        self.sensor = None
        if self.available:
            from harness.devices.system import LocalSystem

            self.system = LocalSystem()  # the host's clock and memory; the GPU's own state is NVML's (sensor)
            self.measured_as = "native"
            self.where = f"local CUDA {self.dev.device_name} (sm_{str(self.dev.compute_version).replace('.', '')})"
            self.jit = ensure_jit_compiler()
            if sensor:
                from harness.sensors import gpu_sensor

                self.sensor = gpu_sensor(index)
            self.info = {"device_arch": f"sm_{str(self.dev.compute_version).replace('.', '')}",
                         "device_name": self.dev.device_name, "driver_version": self.dev.driver_version,
                         "device_tvm": tvm.__version__,
                         "energy_sensor": self.sensor.describe() if self.sensor else "none (NVML unavailable)"}
        else:
            self.measured_as = NOT_RUN
            self.where = f"no CUDA device here ({self.why_not})"
            self.info = {"device": "none", "why": self.why_not}

    def load(self, path: Path) -> LoadedModule:
        if not self.available:
            raise DeviceError(f"cannot run {Path(path).name}: {self.where}")
        check_arch(self.dev, self.target_arch)
        try:
            lib = tvm.runtime.load_module(str(path))
        except Exception as e:
            raise DeviceError(f"cannot load {path} on {self.where}: {str(e).splitlines()[0]}") from e
        try:
            vm = relax.VirtualMachine(lib, self.dev)
        except Exception as e:
            raise DeviceError(f"cannot start the VM for {Path(path).name} on {self.where}: "
                              f"{str(e).splitlines()[0]}") from e
        return LoadedModule(vm, self.dev, self.where)



class RPCCudaSession(RPCSession):
    """A remote machine's GPU over TVM RPC (e.g. a Jetson): the VM runs on ``remote.cuda(index)``.

    No energy sensor: NVML would have to run on the remote side (Jetsons have no NVML; their
    INA3221 rails under /sys are a possible later backend)."""

    def __init__(self, *args: Any, cuda_index: int = 0, target_arch: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cuda_index = cuda_index
        self.target_arch = target_arch
        self.sensor = None
        try:
            dev = self.remote.cuda(cuda_index)
            exists = bool(dev.exist)
        except Exception as e:
            raise DeviceError(f"{self.where} cannot open a CUDA device: {str(e).splitlines()[0]} (is its TVM built "
                              "with CUDA, and libcuda/libcudart on its loader path?)") from e
        if not exists:
            raise DeviceError(f"{self.where} has no CUDA device (remote tvm.cuda({cuda_index}).exist is false)")
        self.where = f"{self.where} CUDA {dev.device_name} (sm_{str(dev.compute_version).replace('.', '')})"
        self.info["device_arch"] = f"sm_{str(dev.compute_version).replace('.', '')}"
        self._dev = dev

    def load(self, path: Path) -> LoadedModule:
        check_arch(self._dev, self.target_arch)
        try:
            self.remote.upload(str(path))
            lib = self.remote.load_module(Path(path).name)
            dev = self.remote.cuda(self.cuda_index)
            return LoadedModule(relax.VirtualMachine(lib, dev), dev, self.where)
        except DeviceError:
            raise
        except Exception as e:
            raise DeviceError(f"loading {Path(path).name} on {self.where} failed: {str(e).splitlines()[0]}") from e
