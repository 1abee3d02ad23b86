"""What a backend is: build a Relax module for a resolved target, export the library. And its registry.

Backends are registered by name (``@register_backend("cpu")``) and chosen by the profile's
``backend`` field, as torchao binds a config to its handler: adding a code generator (e.g. ROCm)
means one module with one registered class, not another ``if kind == ...`` in the compile stage.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import tvm

    from harness.profile import TargetProfile


class CompileError(RuntimeError):
    """Compilation or export failed; the message says what to install or change."""


class Backend(Protocol):
    """Builds and exports for one family of TVM targets."""

    name: str
    tunable: bool  # MetaSchedule databases apply (CPU); GPU kernels are scheduled by dlight rules

    def build(self, mod: tvm.IRModule, profile: TargetProfile, database_dir: str | None) -> Any:
        """The Relax VM executable of ``mod`` (``database_dir``: tuning records to apply, or None)."""
        ...

    def export(self, executable: Any, profile: TargetProfile, path: Path) -> dict[str, Any] | None:
        """Write the shared library to ``path`` (host code cross-compiled where the target says so); return a
        manifest of what was verified in it, stored beside the final library as ``<lib>.<name>.json``, or None."""
        ...


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        BACKENDS[name] = cls()
        return cls

    return deco


def manifest_path(lib: Path, backend: str) -> Path:
    """Where a backend's verification manifest of ``lib`` is stored (``<lib>.<backend>.json``)."""
    return Path(lib).with_suffix(f".{backend}.json")


def host_linker(profile: TargetProfile):
    """The ``fcompile`` that links the library's host code: the target's cross compiler, or None (host's)."""
    if not profile.cross_compiler:
        return None
    if shutil.which(profile.cross_compiler) is None:
        raise CompileError(
            f"target {profile.name!r} needs the cross compiler {profile.cross_compiler!r}, which is not on PATH; "
            f"install it (Debian: apt-get install g++-aarch64-linux-gnu) or run `make emu-device`")
    from tvm.support import cc

    return cc.cross_compiler(profile.cross_compiler)
