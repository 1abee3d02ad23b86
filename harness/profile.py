"""A target resolved once: everything the compile stage and the device need to know about it.

Why: a target file (:mod:`harness.targets`) is plain data; *what it means* — the TVM target, the
instruction-set family, the blocked int8 scheme, whether this host can run its code, which backend
builds it, where its tuning records live — used to be worked out again in every module on the way
from ``bench`` to the device (about 30 times). :func:`resolve` works it out once, in ``run_bench`` /
the ``compile`` command, and the :class:`TargetProfile` is passed down; nothing below asks the target
file again, and nothing below builds a ``tvm.target.Target`` of its own.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harness.targets import DeviceSpec, Target, load_target

if TYPE_CHECKING:
    import tvm

    from harness.backend.schemes import Scheme

_HOST_ISA = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm", "arm64": "arm", "riscv64": "riscv"}


def profiles_built() -> int:
    """Profiles built so far in this process (``resolve`` is meant to run once per bench/compile)."""
    return _built


_built = 0  # how many profiles this process built (a test checks: one per run)


@dataclass(frozen=True)
class TargetProfile:
    """One target as the compile stage and the devices see it. Built only by :func:`resolve`."""

    target: Target  # the file as loaded, with any --rpc / --rpc-tracker override applied
    tvm_target: tvm.target.Target  # the one TVM target (``num-cores`` = threads for llvm: MetaSchedule needs it)
    isa: str  # "x86" | "arm" | "riscv" | "cuda" | ...: which tensor intrinsics its code uses
    backend: str  # key of harness.backend.BACKENDS: "cpu" (llvm) | "cuda"
    scheme: Scheme | None  # blocked int8 convolution scheme; None → the plain NCHW integer lowering
    cross: bool  # its code is for another architecture than this host's (cross-compiled, run remotely)
    host_runs: bool  # MetaSchedule's *local* runner can execute its code here
    host_runs_why: str = ""  # why not, when host_runs is False
    int8_pattern: str = field(default="int8")  # tuning-key part of integer variants (kernels differ by scheme)
    host_native: bool = False  # compiled for this machine's own CPU (the file said mcpu = "host")

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def device(self) -> DeviceSpec:
        return self.target.device

    @property
    def threads(self) -> int:
        return self.target.threads

    @property
    def cross_compiler(self) -> str:
        return self.target.cross_compiler

    @property
    def measured_as(self) -> str:
        """native | emulated — how every figure from this target is labelled."""
        return self.target.measured_as

    @property
    def energy(self) -> dict[str, float]:
        return self.target.energy

    @property
    def gpu_code(self) -> str:
        """CUDA device code in the library: the file's ``gpu_code`` or the default (``fatbin``)."""
        from harness.backend.cuda import DEFAULT_GPU_CODE

        return self.target.gpu_code or DEFAULT_GPU_CODE

    @property
    def gpu_arch(self) -> str:
        """``sm_XY`` of a CUDA target (its ``[tvm] arch``), else ""."""
        return str(self.target.tvm.get("arch", "")) if self.backend == "cuda" else ""

    @property
    def pack_weights(self) -> bool:
        """≤ 4-bit kernels stored packed (the target file's ``pack_weights``); only blocked schemes pack."""
        return self.target.pack_weights and self.scheme is not None

    @property
    def database_name(self) -> str:
        """Folder of its tuning databases: records tuned under QEMU rank candidates by their emulated
        speed, so they live apart (``<name>-emulated``) and never reach a real board's build; a host-native
        target's records are kept per CPU (``x86-znver4``): another machine's kernels are not this one's."""
        if self.target.emulated:
            return f"{self.name}-emulated"
        return f"{self.name}-{self.mcpu}" if self.host_native else self.name

    @property
    def mcpu(self) -> str:
        """The CPU the code is compiled for (a host-native target's: this machine's, as LLVM names it)."""
        return str(self.tvm_target.attrs.get("mcpu", "")) if self.backend == "cpu" else ""

    @property
    def cpu(self) -> str:
        """What every row records about the code: the CPU it was compiled for and the int8 scheme / instruction
        it got (``znver4, nchwc_vnni/vpdpbusd``); CUDA targets: the GPU architecture."""
        if self.backend != "cpu":
            return self.gpu_arch or self.backend
        int8 = f"{self.scheme.name}/{self.scheme.instruction}" if self.scheme else "nchw"
        return f"{self.mcpu or 'generic'}, {int8}"


def host_cpu() -> str:
    """This machine's CPU as LLVM names it (``haswell``, ``znver4``, ``sapphirerapids`` ...): what a host-native
    target compiles for. Off x86-64, or where LLVM does not know the CPU, the portable AVX2 baseline
    (``x86-64-v3``) — a host-native x86 target must still build."""
    from tvm.target import codegen

    if _HOST_ISA.get(platform.machine()) != "x86":
        return "x86-64-v3"
    cpu = str(codegen.llvm_get_system_cpu())
    return cpu if cpu and cpu != "generic" and codegen.llvm_is_valid_cpu(cpu, "x86_64-linux-gnu") else "x86-64-v3"


def _tvm_target(target: Target) -> tvm.target.Target:
    import tvm

    d = dict(target.tvm)
    if d.get("kind") == "llvm":
        d.setdefault("num-cores", int(target.threads))
    return tvm.target.Target(d)


def _host_runs(tvm_target: tvm.target.Target, isa: str, cross: bool) -> tuple[bool, str]:
    """Can MetaSchedule's local runner execute this target's code on this machine?"""
    from harness.backend.schemes import target_has_vnni

    if tvm_target.kind.name != "llvm":
        return False, f"{tvm_target.kind.name} needs an RPC runner"
    if cross or isa != "x86" or os.uname().machine != "x86_64":
        return False, ("cross target: the local runner cannot execute it (tuning measures it through the RPC "
                       "runner on the target's device, harness.tuning.rpc)")
    if target_has_vnni(tvm_target):
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        if "avx512_vnni" not in flags:
            return False, "target uses AVX-512 VNNI but this host CPU lacks avx512_vnni"
    return True, ""


def with_rpc(target: Target, rpc: str = "", rpc_tracker: str = "", rpc_key: str = "") -> Target:
    """The target with ``--rpc host:port`` or ``--rpc-tracker host:port --rpc-key K`` overriding its [device]."""
    if rpc:
        host, _, port = rpc.rpartition(":")
        return target.with_device(kind="rpc", host=host, port=int(port), emulated=False)
    if rpc_tracker:
        host, _, port = rpc_tracker.rpartition(":")
        return target.with_device(kind="tracker", host=host, port=int(port), key=rpc_key, emulated=False)
    return target


def resolve(target: Target | str, rpc: str = "", rpc_tracker: str = "", rpc_key: str = "") -> TargetProfile:
    """The :class:`TargetProfile` of ``target`` (a loaded file or a name in ``targets/``), device overrides applied.

    Raises :class:`harness.targets.TargetError` for an unknown or malformed target, before any work.
    """
    from harness.backend.schemes import isa_family, scheme_from_layout

    t = load_target(target) if isinstance(target, str) else target
    t = with_rpc(t, rpc, rpc_tracker, rpc_key)
    native = t.host_native
    if native:
        t = replace(t, tvm={**t.tvm, "mcpu": host_cpu()})
    tvm_target = _tvm_target(t)
    isa = isa_family(tvm_target)
    is_llvm = tvm_target.kind.name == "llvm"
    here = platform.machine()
    cross = is_llvm and ((t.arch != here) if t.arch else isa != _HOST_ISA.get(here, here))
    scheme = scheme_from_layout(t.int8_layout, tvm_target) if is_llvm else None
    if native:  # this CPU's roofline: the one of the scheme it got
        key = scheme.name if scheme is not None else ""
        t = replace(t, peak_int8_gmacs=t.peak_int8_gmacs_by_scheme.get(key, t.peak_int8_gmacs),
                    peak_fp32_gmacs=t.peak_fp32_gmacs_by_scheme.get(key, t.peak_fp32_gmacs))
    host_runs, why = _host_runs(tvm_target, isa, cross)
    global _built
    _built += 1
    pattern = "int8" if scheme is None else f"int8-{scheme.name}" + ("-packed" if t.pack_weights else "")
    return TargetProfile(t, tvm_target, isa, "cpu" if is_llvm else str(tvm_target.kind.name), scheme, cross,
                         host_runs, why, pattern, native)


def as_profile(target: TargetProfile | Target | str) -> TargetProfile:
    """The profile itself, or a target (file or name) resolved now. For the public entry points that a
    script or a test may call directly (``compile_module``, ``open_device``, ``tune``, ...): inside a run
    the profile ``run_bench`` resolved is what arrives, so a run still resolves its target once."""
    return target if isinstance(target, TargetProfile) else resolve(target)
