"""The MetaSchedule tuning database: persisted JSON, keyed by kernel structure, re-applied at zero cost.

Layout on disk (a cache, not committed: tuning results are machine-specific)::

    $(cache_root)/tuning/<target>/<key>/
        database_workload.json         MetaSchedule's JSON database (one line per kernel workload)
        database_tuning_record.json    (one line per measured schedule)
        tuned.json                     what was tuned: trials, task names, workload hashes
        logs/                          MetaSchedule's own logs

The database is keyed by each kernel's *structure* (shapes, dtypes, the fused computation), never by
weight values: weights are arguments of the kernels, not part of them. So a retrained checkpoint, or
another quantization plan with the same kernel shapes (all plans store weights as int8), finds every
kernel in the database and compiles with no tuning. ``key`` only groups databases on disk; use
:func:`default_key` (architecture, input shape, batch, dtype pattern).

This module: where databases live, what is in them, applying one. Tuning itself is
:mod:`harness.tuning.tuner`; measuring candidates on a remote or emulated board is :mod:`harness.tuning.rpc`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import tvm
import tvm_ffi
from tvm import relax

from harness.backend import tvm_fixes
from laaq.cache import cache_root

if TYPE_CHECKING:
    from harness.profile import TargetProfile
    from harness.targets import Target


def default_key(arch: str, input_shape: tuple[int, ...], batch: int, pattern: str) -> str:
    """``resnet20-3x32x32-b1-int8`` style key; ``pattern`` e.g. "fp32", "int8", "int8-nchwc"."""
    return f"{arch}-{'x'.join(map(str, input_shape))}-b{batch}-{pattern}"


def database_dir(profile: TargetProfile, key: str) -> Path:
    """``$(cache_root)/tuning/<target>[-emulated]/<key>`` (see ``TargetProfile.database_name``)."""
    return cache_root() / "tuning" / profile.database_name / key



# ------------------------------------------------------------------------------------ structure
def fuse(mod: tvm.IRModule, tvm_target: tvm.target.Target) -> tvm.IRModule:
    """Legalize and fuse (the tuning tasks are the fused PrimFuncs); what ``static_shape_tuning`` does first."""
    seq = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])
    with tvm_target:
        return seq(mod)


def kernels(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def workload_digest(fused: tvm.IRModule) -> str:
    """Hash of the set of kernel structures (weight values are not in the kernels)."""
    hashes = sorted(str(tvm_ffi.structural_hash(f)) for f in kernels(fused).values())
    return hashlib.sha256(",".join(hashes).encode()).hexdigest()[:16]


def open_db(work_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    work_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(work_dir), module_equality="structural")


def has_record(db, m: tvm.IRModule) -> bool:
    return bool(db.has_workload(m)) and bool(db.get_top_k(db.commit_workload(m), 1))


def missing_tasks(fused: tvm.IRModule, tvm_target: tvm.target.Target, work_dir: Path) -> list:
    """MetaSchedule tasks of ``fused`` with no tuning record in the database at ``work_dir``."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(fused, tvm_target)
    if not (work_dir / "database_workload.json").exists():
        return list(tasks)
    db = open_db(work_dir)
    return [t for t in tasks if not has_record(db, t.dispatched[0])]


def existing_database(profile: TargetProfile, key: str) -> str | None:
    """The database folder for (target, key) if it holds records, else None."""
    work_dir = database_dir(profile, key)
    return str(work_dir) if (work_dir / "database_workload.json").exists() else None


def apply_database(mod: tvm.IRModule, profile: TargetProfile | Target, key: str) -> tvm.IRModule:
    """Legalized + fused module with every kernel found in the database replaced by its tuned
    schedule (zero tuning cost). Kernels not in the database stay untuned."""
    from harness.profile import as_profile

    profile = as_profile(profile)
    tvm_target = profile.tvm_target
    tvm_fixes.light_tensor_intrin(profile.isa)
    fused, db = fuse(mod, tvm_target), existing_database(profile, key)
    if db is None:
        return fused
    with tvm_target:
        return relax.transform.MetaScheduleApplyDatabase(db)(fused)
