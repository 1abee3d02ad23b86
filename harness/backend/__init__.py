"""Backends: a lowered Relax module → a compiled, exported library for one resolved target.

* :mod:`harness.backend.base` — the ``Backend`` protocol, its registry, ``CompileError``;
* :mod:`harness.backend.cpu` — ``llvm`` targets: the CPU pipeline with the tuning database and the
  blocked int8 hand schedule (:mod:`harness.backend.schedule`), schemes in :mod:`harness.backend.schemes`,
  our intrinsics in :mod:`harness.backend.intrinsics`, TVM 0.27 workarounds in :mod:`harness.backend.tvm_fixes`;
* :mod:`harness.backend.cuda` / :mod:`harness.backend.cuda_library` — CUDA targets: dlight schedules,
  nvcc device code, the exported library's checks.

Kept light on purpose: a backend module is imported when a profile first asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.backend.base import BACKENDS, Backend, CompileError

if TYPE_CHECKING:
    from harness.profile import TargetProfile

__all__ = ["BACKENDS", "Backend", "CompileError", "backend_for"]


def backend_for(profile: TargetProfile) -> Backend:
    import harness.backend.cpu  # noqa: F401 - registers "cpu"
    import harness.backend.cuda_library  # noqa: F401 - registers "cuda"

    try:
        return BACKENDS[profile.backend]
    except KeyError:
        raise CompileError(f"target {profile.name!r}: no backend for TVM kind {profile.backend!r} "
                           f"(have {sorted(BACKENDS)})") from None
