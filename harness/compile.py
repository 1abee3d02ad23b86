"""Relax module → exported shared library for a target (cross-compiled where the target says so).

The exported ``.so`` is the artefact every measurement runs on; it is what one would copy to the
board. Cross compilation is a field of the target file, so x86 and ARM go through the same code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tvm

from harness.targets import Target


class CompileError(RuntimeError):
    """Compilation or export failed; the message says what to install or change."""


@dataclass(frozen=True)
class Artefact:
    """A compiled library on disk and what it was built from."""

    path: Path
    target: str
    variant: str
    batch: int
    compile_s: float
    size_bytes: int


def _fcompile(target: Target):
    if not target.cross_compiler:
        return None
    if shutil.which(target.cross_compiler) is None:
        raise CompileError(
            f"target {target.name!r} needs the cross compiler {target.cross_compiler!r}, which is not on PATH; "
            f"install it (Debian: apt-get install g++-aarch64-linux-gnu) or run `make emu-device`")
    from tvm.support import cc

    return cc.cross_compiler(target.cross_compiler)


def compile_module(mod: tvm.IRModule, target: Target, out: Path, variant: str, batch: int,
                   tuning_key: str | None = None, trials: int = 0, tune: bool = True) -> Artefact:
    """Compile + ``export_library``; the library is written atomically (temp + rename).

    CPU targets go through :func:`harness.tune.build`: the tuning database for ``tuning_key`` is applied
    when one exists (``trials`` > 0 first tunes what it lacks), and VNNI targets get the hand-written
    int8 schedule for kernels the database does not cover. GPU targets use :mod:`harness.gpu`.
    """
    fcompile = _fcompile(target)
    gpu = None
    if target.tvm.get("kind") == "cuda":  # CUDA code: GPU schedules, nvcc device code, library check
        from harness import gpu
    t0 = time.perf_counter()
    try:
        if gpu is None:
            from harness.tune import build

            ex = build(mod, target, tuning_key, trials=trials, tune_enabled=tune)
        else:
            ex = gpu.compile_for_gpu(mod, target, target.tvm_target())
    except Exception as e:  # TVM raises its own error types; keep the first line, it is the useful one
        raise CompileError(f"TVM could not compile {variant} for {target.name}: {str(e).splitlines()[0]}") from e
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so")
    os.close(fd)
    try:
        if gpu is not None:
            info = gpu.export_cuda_library(ex, target, Path(tmp), fcompile)
        elif fcompile is None:
            ex.export_library(tmp)
        else:
            ex.export_library(tmp, fcompile=fcompile)
        os.replace(tmp, out)
        if gpu is not None:
            gpu.write_manifest(out, info)
    except Exception as e:
        raise CompileError(f"exporting {variant} for {target.name} failed: {str(e).splitlines()[0]}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Artefact(out, target.name, variant, batch, time.perf_counter() - t0, out.stat().st_size)
