"""``llvm`` targets (x86, Arm): TVM's CPU pipeline with the tuning database and the blocked int8 hand schedule.

The same code builds for this host and cross-builds for a board: the profile carries the TVM
target (``mtriple``/``mcpu``), the scheme and the cross compiler, so no branch here names a target.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import tvm
from tvm import relax

from harness.backend import float_schedule
from harness.backend.base import host_linker, register_backend
from harness.backend.float_dense import pad_dense_pass
from harness.backend.schedule import schedule_passes
from harness.backend.schemes import Scheme, auto_scheme
from harness.backend.tvm_fixes import light_tensor_intrin

if TYPE_CHECKING:
    from harness.profile import TargetProfile


def fast_pipeline(tvm_target: tvm.target.Target, database_dir: str | None = None,
                  scheme: Scheme | None = None) -> tvm.transform.Pass:
    """The CPU default pipeline with (optional) tuning database + the blocked hand schedule
    (:func:`schedule_passes`) after legalization and fusion.

    A float32 model with convolutions and *no* tuning database gets the default fp32 schedule of
    :mod:`harness.backend.float_schedule` (NCHWc convolutions, hand-scheduled convs and dense layers);
    with a database, its (NCHW) records apply as before."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    scheme = scheme if scheme is not None else auto_scheme(tvm_target)

    @tvm.transform.module_pass(opt_level=0, name="LaaqFastInt8Pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        hand_float = database_dir is None and float_schedule.has_float_conv(mod)
        lanes = float_schedule.float_lanes(tvm_target)
        passes = ([relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
                  + cpu_generic.library_dispatch_passes(tvm_target))
        passes += [pad_dense_pass(lanes), float_schedule.float_layout_pass(lanes)] if hand_float else []
        passes += cpu_generic.legalize_passes(tvm_target)
        passes += schedule_passes(scheme, database_dir)
        passes += [float_schedule.float_schedule_pass(lanes)] if hand_float else []
        passes += cpu_generic.dataflow_lower_passes(tvm_target) + cpu_generic.finalize_passes(tvm_target)
        with tvm_target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_fast(mod: tvm.IRModule, tvm_target: tvm.target.Target, database_dir: str | None = None,
                 scheme: Scheme | None = None, isa: str = "x86"):
    """``tvm.compile`` through :func:`fast_pipeline` → a VM executable (``export_library`` as usual)."""
    light_tensor_intrin(isa)
    return tvm.compile(mod, target=tvm_target, relax_pipeline=fast_pipeline(tvm_target, database_dir, scheme))


@register_backend("cpu")
class CpuBackend:
    name = "cpu"
    tunable = True

    def build(self, mod: tvm.IRModule, profile: TargetProfile, database_dir: str | None) -> Any:
        return compile_fast(mod, profile.tvm_target, database_dir, profile.scheme, profile.isa)

    def export(self, executable: Any, profile: TargetProfile, path: Path) -> None:
        """No manifest: the library's ELF header says what it was built for (checked when loaded)."""
        fcompile = host_linker(profile)
        if fcompile is None:
            executable.export_library(str(path))
        else:
            executable.export_library(str(path), fcompile=fcompile)
