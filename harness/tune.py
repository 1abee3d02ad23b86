"""MetaSchedule tuning with a persisted JSON database, re-applied at zero tuning cost.

Layout on disk (a cache, not committed: tuning results are machine-specific)::

    ${LAAQ_CACHE:-~/.cache/laaq-bench}/tuning/<target>/<key>/
        database_workload.json         MetaSchedule's JSON database (one line per kernel workload)
        database_tuning_record.json    (one line per measured schedule)
        tuned.json                     what was tuned: trials, task names, workload hashes
        logs/                          MetaSchedule's own logs

The database is keyed by each kernel's *structure* (shapes, dtypes, the fused computation), never by
weight values: weights are arguments of the kernels, not part of them. So a retrained checkpoint, or
another quantization plan with the same kernel shapes (all plans store weights as int8), finds every
kernel in the database and compiles with no tuning. ``key`` only groups databases on disk; use
:func:`default_key` (architecture, input shape, batch, dtype pattern).

Entry point for ``harness/compile.py``: :func:`build` (tune if asked and needed, apply the
database, compile) or, for a module to hand to ``tvm.compile`` yourself, :func:`maybe_apply_tuning`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tvm
import tvm_ffi
from tvm import relax

from harness import tvm_fixes


def cache_root() -> Path:
    return Path(os.environ.get("LAAQ_CACHE", str(Path.home() / ".cache" / "laaq-bench"))) / "tuning"


def default_key(arch: str, input_shape: tuple[int, ...], batch: int, pattern: str) -> str:
    """``resnet20-3x32x32-b1-int8`` style key; ``pattern`` e.g. "fp32", "int8", "int8-nchwc"."""
    return f"{arch}-{'x'.join(map(str, input_shape))}-b{batch}-{pattern}"


def database_dir(target_name: str, key: str) -> Path:
    return cache_root() / target_name / key


def database_name(target) -> str:
    """Folder name of a target's databases: records tuned under QEMU rank candidates by their
    emulated speed, so they live apart (``<name>-emulated``) and never reach a real board's build."""
    return f"{target.name}-emulated" if getattr(target, "emulated", False) else target.name


def hand_scheduled(task_name: str, target) -> bool:
    """Is this kernel a convolution the target's blocked int8 scheme hand-schedules *over* any
    tuning record (schemes MetaSchedule cannot tensorize)? Then tuning it would waste trials."""
    from harness.fast_int8 import scheme_for

    scheme = scheme_for(target)
    return scheme is not None and not scheme.metaschedule_tensorizes and "conv2d_nchwc_int8" in task_name


def tvm_target_of(target) -> tvm.target.Target:
    """The target's ``tvm.target.Target`` plus ``num-cores`` (MetaSchedule needs it) = its thread count."""
    d = dict(target.tvm)
    if d.get("kind") == "llvm":
        d.setdefault("num-cores", int(target.threads))
    return tvm.target.Target(d)


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


def _open_db(work_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    work_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(work_dir), module_equality="structural")


def _has_record(db, m: tvm.IRModule) -> bool:
    return bool(db.has_workload(m)) and bool(db.get_top_k(db.commit_workload(m), 1))


def missing_tasks(fused: tvm.IRModule, tvm_target: tvm.target.Target, work_dir: Path) -> list:
    """MetaSchedule tasks of ``fused`` with no tuning record in the database at ``work_dir``."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(fused, tvm_target)
    if not (work_dir / "database_workload.json").exists():
        return list(tasks)
    db = _open_db(work_dir)
    return [t for t in tasks if not _has_record(db, t.dispatched[0])]


# ---------------------------------------------------------------------------------------- tune
@dataclass
class TuneReport:
    work_dir: str
    tuned: bool  # False: everything came from the database (zero tuning cost)
    trials: int = 0
    tasks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""


def host_can_run(tvm_target: tvm.target.Target) -> tuple[bool, str]:
    """Can MetaSchedule's *local* runner execute code for this target on this machine?"""
    from harness.fast_int8 import target_has_vnni

    if tvm_target.kind.name != "llvm":
        return False, f"{tvm_target.kind.name} needs an RPC runner"
    if tvm_fixes.target_arch(tvm_target) != "x86" or os.uname().machine != "x86_64":
        return False, ("cross target: the local runner cannot execute it (tune() measures it through the RPC "
                       "runner on the target's device, harness.tune_rpc)")
    if target_has_vnni(tvm_target):
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        if "avx512_vnni" not in flags:
            return False, "target uses AVX-512 VNNI but this host CPU lacks avx512_vnni"
    return True, ""


def tune(mod: tvm.IRModule, target, key: str, trials: int, progress: bool = True,
         per_task: int | None = None, fused: tvm.IRModule | None = None, log=print,
         op_names: tuple[str, ...] = (), quick: bool = False) -> TuneReport:
    """Tune the kernels of ``mod`` not yet in the database for (target, key); ``trials`` in total.

    ``target`` is a :class:`harness.targets.Target`. Kernels already in the database are not tuned
    again (a second call costs nothing). ``op_names``: only kernels whose name contains one of
    these. ``quick``: random sampling, no cost model (tests); otherwise evolutionary search with
    the XGBoost cost model (needs ``xgboost-cpu``). Returns what was done.

    A cross target (aarch64 from this x86 host) is built with its ``cross_compiler`` and measured by
    MetaSchedule's RPC runner on its device (:mod:`harness.tune_rpc`): the board at ``--rpc`` /
    ``--rpc-tracker``, or an emulated board started for the tuning; ``tuned.json`` and the returned
    note then say how the candidates were measured (emulated timings are not board performance).
    """
    tvm_fixes.check_ffi_json()
    tvm_target = tvm_target_of(target)
    tvm_fixes.light_tensor_intrin(tvm_fixes.target_arch(tvm_target))
    work_dir = database_dir(database_name(target), key)
    fused = fused if fused is not None else fuse(mod, tvm_target)
    tasks = missing_tasks(fused, tvm_target, work_dir)
    if op_names:
        tasks = [t for t in tasks if any(o in t.task_name for o in op_names)]
    tasks = [t for t in tasks if not hand_scheduled(t.task_name, target)]
    if not tasks or trials <= 0:
        return TuneReport(str(work_dir), False, note="all kernels in database" if not tasks else "no trials")
    from harness import tune_rpc

    if tune_rpc.is_cross(target, tvm_target):  # cross-built candidates, measured on the target's device
        measuring = tune_rpc.rpc_measurer(target, tvm_target, progress=progress)
    else:
        ok, why = host_can_run(tvm_target)
        if not ok:
            return TuneReport(str(work_dir), False, note=f"not tuned: {why}")
        measuring = contextlib.nullcontext(tune_rpc.local_measurer(tvm_target))
    per_task = per_task or max(1, trials // len(tasks))
    try:
        with measuring as m:
            dt = _tune_tasks(tasks, target, key, trials, per_task, work_dir, m, progress, log, quick)
    except tune_rpc.TuneDeviceUnavailable as e:
        return TuneReport(str(work_dir), False, note=f"not tuned: {e}")
    from harness.results import atomic_write_text

    meta = {"target": target.name, "tvm_target": str(tvm_target), "key": key, "trials": trials,
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


def _tune_tasks(tasks: list, target, key: str, trials: int, per_task: int, work_dir: Path, m, progress: bool,
                log, quick: bool) -> float:
    """``ms.tune_tasks`` with the measurer's builder and runner; returns the seconds it took."""
    from tvm.s_tir import meta_schedule as ms

    if progress:
        log(f"tuning {len(tasks)} kernel(s) for {target.name}/{key}: {trials} trials "
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
            builder=m.builder, runner=m.runner, database=_open_db(work_dir), cost_model="random" if quick else "xgb")
    finally:
        ms_log.setLevel(old_level)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------- apply / build
def _existing_db(target, key: str) -> str | None:
    """The database folder for (target, key) if it holds records, else None."""
    work_dir = database_dir(database_name(target), key)
    return str(work_dir) if (work_dir / "database_workload.json").exists() else None


def _tune_first(mod: tvm.IRModule, target, key: str, trials: int, tune_enabled: bool, progress: bool, log,
                fused: tvm.IRModule | None = None) -> None:
    if tune_enabled and trials > 0:
        rep = tune(mod, target, key, trials, progress=progress, fused=fused, log=log)
        if progress and rep.note:
            log(f"tuning {target.name}/{key}: {rep.note}")


def apply_database(mod: tvm.IRModule, target, key: str) -> tvm.IRModule:
    """Legalized + fused module with every kernel found in the database replaced by its tuned
    schedule (zero tuning cost). Kernels not in the database stay untuned."""
    tvm_target = tvm_target_of(target)
    tvm_fixes.light_tensor_intrin(tvm_fixes.target_arch(tvm_target))
    fused, db = fuse(mod, tvm_target), _existing_db(target, key)
    if db is None:
        return fused
    with tvm_target:
        return relax.transform.MetaScheduleApplyDatabase(db)(fused)


def maybe_apply_tuning(mod: tvm.IRModule, target, key: str, trials: int = 0, tune_enabled: bool = True,
                       progress: bool = True, log=print) -> tvm.IRModule:
    """Tune what is missing (if ``tune_enabled`` and ``trials`` > 0), then apply the database
    (not at all when ``tune_enabled`` is False).

    Returns a module that ``tvm.compile(mod, target=...)`` takes as usual; the target's blocked int8
    convolutions get the hand schedule of :mod:`harness.fast_int8` where the database does not win
    (:func:`harness.fast_int8.schedule_passes`).
    """
    from harness.fast_int8 import schedule_passes, scheme_for

    tvm_target = tvm_target_of(target)
    tvm_fixes.light_tensor_intrin(tvm_fixes.target_arch(tvm_target))
    fused = fuse(mod, tvm_target)
    _tune_first(mod, target, key, trials, tune_enabled, progress, log, fused=fused)
    db = _existing_db(target, key) if tune_enabled else None
    with tvm_target:
        return tvm.transform.Sequential(schedule_passes(scheme_for(target), db))(fused)


def build(mod: tvm.IRModule, target, key: str | None, trials: int = 0, tune_enabled: bool = True,
          progress: bool = True, log=print):
    """Drop-in for ``tvm.compile(mod, target=target.tvm_target())`` with tuning (key None → no DB)."""
    from harness.fast_int8 import compile_fast, scheme_for

    if target.tvm.get("kind") != "llvm":  # GPU targets: their own default pipeline, untouched
        return tvm.compile(mod, target=target.tvm_target())
    tvm_target = tvm_target_of(target)
    tvm_fixes.light_tensor_intrin(tvm_fixes.target_arch(tvm_target))
    scheme = scheme_for(target)
    if key is None or not tune_enabled:  # --no-tune: neither tune nor apply a database
        return compile_fast(mod, tvm_target, scheme=scheme)
    _tune_first(mod, target, key, trials, tune_enabled, progress, log)
    return compile_fast(mod, tvm_target, _existing_db(target, key), scheme=scheme)


def report_dict(r: TuneReport) -> dict:
    return asdict(r)
