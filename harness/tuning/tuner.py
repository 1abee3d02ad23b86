"""MetaSchedule tuning of the kernels a database lacks, measured where the target's code runs.

Kernels already in the database (:mod:`harness.tuning.database`) are never tuned again; the
convolutions a blocked scheme hand-schedules over any record are not tuned at all. Candidates are
measured by MetaSchedule's local runner when this host runs the target's code, else over RPC on the
target's device (:mod:`harness.tuning.rpc`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import tvm

from harness.backend import tvm_fixes
from harness.profile import as_profile
from harness.results import atomic_write_text
from harness.tuning import rpc
from harness.tuning.database import database_dir, fuse, missing_tasks, open_db, workload_digest

if TYPE_CHECKING:
    from harness.profile import TargetProfile
    from harness.targets import Target


def hand_scheduled(task_name: str, profile: TargetProfile) -> bool:
    """Is this kernel a convolution the target's blocked int8 scheme hand-schedules *over* any tuning record
    (every scheme: :func:`harness.backend.schedule.schedule_passes`)? Then tuning it would waste trials."""
    return profile.scheme is not None and "conv2d_nchwc_int8" in task_name


@dataclass
class TuneReport:
    work_dir: str
    tuned: bool  # False: everything came from the database (zero tuning cost)
    trials: int = 0
    tasks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""


def tune(mod: tvm.IRModule, profile: TargetProfile | Target, key: str, trials: int, progress: bool = True,
         per_task: int | None = None, fused: tvm.IRModule | None = None, log=print,
         op_names: tuple[str, ...] = (), quick: bool = False) -> TuneReport:
    """Tune the kernels of ``mod`` not yet in the database for (target, key); ``trials`` in total.

    Kernels already in the database are not tuned
    again (a second call costs nothing). ``op_names``: only kernels whose name contains one of
    these. ``quick``: random sampling, no cost model (tests); otherwise evolutionary search with
    the XGBoost cost model (needs ``xgboost-cpu``). Returns what was done.

    A cross target (aarch64 from this x86 host) is built with its ``cross_compiler`` and measured by
    MetaSchedule's RPC runner on its device (:mod:`harness.tuning.rpc`): the board at ``--rpc`` /
    ``--rpc-tracker``, or an emulated board started for the tuning; ``tuned.json`` and the returned
    note then say how the candidates were measured (emulated timings are not board performance).
    """
    tvm_fixes.check_ffi_json()
    profile = as_profile(profile)
    tvm_target = profile.tvm_target
    tvm_fixes.light_tensor_intrin(profile.isa)
    work_dir = database_dir(profile, key)
    fused = fused if fused is not None else fuse(mod, tvm_target)
    tasks = missing_tasks(fused, tvm_target, work_dir)
    if op_names:
        tasks = [t for t in tasks if any(o in t.task_name for o in op_names)]
    tasks = [t for t in tasks if not hand_scheduled(t.task_name, profile)]
    if not tasks or trials <= 0:
        return TuneReport(str(work_dir), False, note="all kernels in database" if not tasks else "no trials")
    if profile.cross:  # cross-built candidates, measured on the target's device
        measuring = rpc.rpc_measurer(profile, progress=progress)
    else:
        if not profile.host_runs:
            return TuneReport(str(work_dir), False, note=f"not tuned: {profile.host_runs_why}")
        measuring = contextlib.nullcontext(rpc.local_measurer(profile))
    per_task = per_task or max(1, trials // len(tasks))
    try:
        with measuring as m:
            dt = _tune_tasks(tasks, profile, key, trials, per_task, work_dir, m, progress, log, quick)
    except rpc.TuneDeviceUnavailable as e:
        return TuneReport(str(work_dir), False, note=f"not tuned: {e}")
    meta = {"target": profile.name, "tvm_target": str(tvm_target), "key": key, "trials": trials,
            "tasks": [t.task_name for t in tasks], "workload_digest": workload_digest(fused),
            "seconds": round(dt, 1), "measured": m.measured, "runner": m.where, "tvm": tvm.__version__,
            "host": os.uname().nodename}
    atomic_write_text(work_dir / "tuned.json", json.dumps(meta, indent=1))
    if progress:
        log(f"tuned {len(tasks)} kernel(s) in {dt:.0f} s, measured {m.measured}")
    return TuneReport(str(work_dir), True, trials, [t.task_name for t in tasks], dt,
                      note=m.measured if m.where != "local" else "")


@contextlib.contextmanager
def _unnamed_log_handlers_detached(logger: logging.Logger):
    """MetaSchedule's ``create_loggers`` re-lists the handlers already on its logger *by name* in a
    ``dictConfig`` and fails (``'NoneType' object has no attribute 'format'``) on an unnamed one —
    such as the capture handler pytest attaches to every non-propagating logger, which the first
    tuning in a process makes this one. Keep those off the logger while it configures, then put them back."""
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for h in unnamed:
        logger.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            logger.addHandler(h)


def _tune_tasks(tasks: list, profile: TargetProfile, key: str, trials: int, per_task: int, work_dir: Path, m,
                progress: bool, log, quick: bool) -> float:
    """``ms.tune_tasks`` with the measurer's builder and runner; returns the seconds it took."""
    from tvm.s_tir import meta_schedule as ms

    if progress:
        log(f"tuning {len(tasks)} kernel(s) for {profile.name}/{key}: {trials} trials "
            f"(≤{per_task} per kernel) on {m.where} → {work_dir}")
        if m.where != "local":
            log(f"measured: {m.measured}")
    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
    old_level = ms_log.level
    ms_log.setLevel(logging.INFO if progress else logging.WARNING)
    strategy = (ms.search_strategy.ReplayTrace() if quick else
                ms.search_strategy.EvolutionarySearch(population_size=256, init_min_unmeasured=32))
    with _unnamed_log_handlers_detached(ms_log):
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, str(work_dir), strategy=strategy, seed=0)
    t0 = time.perf_counter()
    try:
        ms.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
            max_trials_per_task=per_task, num_trials_per_iter=min(64, max(4, per_task)),
            builder=m.builder, runner=m.runner, database=open_db(work_dir), cost_model="random" if quick else "xgb")
    finally:
        ms_log.setLevel(old_level)
    return time.perf_counter() - t0
