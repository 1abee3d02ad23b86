"""Relax module → exported shared library for a resolved target: tune if asked, build, export atomically.

The exported ``.so`` is the artefact every measurement runs on; it is what one would copy to the
board. The stage goes one way: tuning database (:mod:`harness.tuning`) → backend build and export
(:mod:`harness.backend`, chosen by the profile) → the library on disk. Cross compilation is a field
of the target file, so x86, Arm and CUDA go through the same function.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backend import CompileError, backend_for
from harness.backend.base import host_linker, manifest_path
from harness.profile import as_profile
from harness.results import atomic_write_text

if TYPE_CHECKING:
    import tvm

    from harness.profile import TargetProfile
    from harness.targets import Target

__all__ = ["Artefact", "CompileError", "build_executable", "compile_module"]


@dataclass(frozen=True)
class Artefact:
    """A compiled library on disk and what it was built from."""

    path: Path
    target: str
    variant: str
    batch: int
    compile_s: float
    size_bytes: int
    tuned: bool = False  # a MetaSchedule database was applied (else TVM's default schedules / the hand schedule)


def build_executable(mod: tvm.IRModule, profile: TargetProfile | Target, variant: str = "model",
                     tuning_key: str | None = None, trials: int = 0, tune: bool = True, log=print,
                     progress: bool = True) -> Any:
    """The Relax VM executable of ``mod`` for the target, in memory (what :func:`compile_module` exports).

    Backends with tuning databases (CPU): ``trials`` > 0 first tunes the kernels the database for
    ``tuning_key`` lacks; then the database is applied when one exists (``tune=False``: neither). The
    blocked int8 hand schedule covers convolutions the database does not win.
    """
    profile = as_profile(profile)
    database = tuning_database(mod, profile, tuning_key, trials, tune, log, progress)
    return _build(mod, profile, variant, database)


def tuning_database(mod: tvm.IRModule, profile: TargetProfile, tuning_key: str | None, trials: int, tune: bool,
                    log=print, progress: bool = True) -> str | None:
    """The database folder to apply (after tuning what it lacks when ``trials`` > 0), or None."""
    database = None
    if backend_for(profile).tunable and tune and tuning_key is not None:
        from harness.tuning import existing_database
        from harness.tuning import tune as tune_kernels

        if trials > 0:
            rep = tune_kernels(mod, profile, tuning_key, trials, progress=progress, log=log)
            if progress and rep.note:
                log(f"tuning {profile.name}/{tuning_key}: {rep.note}")
        database = existing_database(profile, tuning_key)
    return database


def _build(mod: tvm.IRModule, profile: TargetProfile, variant: str, database: str | None) -> Any:
    try:
        return backend_for(profile).build(mod, profile, database)
    except CompileError:
        raise
    except Exception as e:  # TVM raises its own error types; keep the first line, it is the useful one
        raise CompileError(f"TVM could not compile {variant} for {profile.name}: {str(e).splitlines()[0]}") from e


def compile_module(mod: tvm.IRModule, profile: TargetProfile | Target, out: Path, variant: str, batch: int,
                   tuning_key: str | None = None, trials: int = 0, tune: bool = True,
                   log=print, progress: bool = True) -> Artefact:
    """Compile (:func:`build_executable`) + export; the library is written atomically (temp + rename)."""
    profile = as_profile(profile)
    backend = backend_for(profile)
    host_linker(profile)  # a missing cross compiler fails now, not after the build
    t0 = time.perf_counter()
    database = tuning_database(mod, profile, tuning_key, trials, tune, log, progress)
    ex = _build(mod, profile, variant, database)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so")
    os.close(fd)
    try:
        manifest = backend.export(ex, profile, Path(tmp))  # a ".so" name: export_library picks the linker by it
        os.chmod(tmp, 0o644)  # laaq.atomic's mode; its ".tmp" name would not do here
        os.replace(tmp, out)
        if manifest is not None:
            atomic_write_text(manifest_path(out, backend.name), json.dumps(manifest, indent=2) + "\n")
    except CompileError:
        raise
    except Exception as e:
        raise CompileError(f"exporting {variant} for {profile.name} failed: {str(e).splitlines()[0]}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Artefact(out, profile.name, variant, batch, time.perf_counter() - t0, out.stat().st_size,
                    tuned=database is not None)
