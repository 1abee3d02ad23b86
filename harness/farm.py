"""Many targets in one command: ``bench --target x86 --target rpi4 ...`` (``make bench TARGET="x86 rpi4"``).

Each target is an ordinary :func:`harness.bench.run_bench` run with its own run folder (so each resumes
on its own), and one comparison report (``results/comparison.{md,html}``) covers them all at the end.

Order, and why:

* the model is trained (or loaded from the cache) **once**, first, so no two runs train it twice;
* targets reached through an **RPC tracker** run **in parallel**, each in its own process: the tracker
  queues every session request by device key and hands each a free board, so two boards under one key
  serve two targets (or two runs) at once, and a board that drops out fails its own process only;
* every other target (this host, a direct RPC server, the emulated boards) runs **one after another** in
  this process: they share this machine's cores (local, QEMU), so overlapping them would only distort
  each other's timings.

A failing target never stops the others: its error is reported and the command exits non-zero at the end.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.bench import BenchConfig, resolve_profile, run_bench


@dataclass
class TargetOutcome:
    """What one target's run left: its folder and rows, or the error that stopped it."""

    target: str
    folder: Path | None
    rows: list[dict]
    error: str = ""
    parallel: bool = False
    seconds: float = 0.0


def through_tracker(cfg: BenchConfig) -> bool:
    """Does this target's device come from an RPC tracker (file ``[device] kind = "tracker"`` or --rpc-tracker)?"""
    return resolve_profile(cfg).device.kind == "tracker"


def _child(cfg: BenchConfig, log_path: str) -> None:
    """One target in a spawned process: its output to its own log file (progress bars off)."""
    with open(log_path, "w", buffering=1) as out:
        sys.stdout = sys.stderr = out
        try:
            run_bench(cfg, progress=False)
        except BaseException:
            traceback.print_exc()
            raise SystemExit(1) from None


def _read_rows(cfg: BenchConfig) -> list[dict]:
    import pandas as pd

    path = cfg.folder() / "metrics.csv"
    return pd.read_csv(path).to_dict("records") if path.exists() else []


def run_targets(cfgs: list[BenchConfig], progress: bool = True,
                log: Callable[[str], None] = lambda m: print(m, flush=True)) -> list[TargetOutcome]:
    """Run every target's benchmark (trackers in parallel, the rest in turn), then one comparison report."""
    from harness.report import write_comparison
    from laaq.data import load_dataset
    from laaq.train import obtain_model

    for cfg in cfgs:  # an unknown or malformed target fails here, before any work
        resolve_profile(cfg)
    first = cfgs[0]
    obtain_model(load_dataset(first.dataset, first.seed, first.data_dir), replace(first.train, seed=first.seed),
                 first.model_source(), progress=progress)  # once (built-in or the user's), cached for every run
    parallel = [c for c in cfgs if through_tracker(c)]
    outcomes: dict[str, TargetOutcome] = {}
    spawn = multiprocessing.get_context("spawn")
    procs = []
    for cfg in parallel:
        log_path = Path(cfg.results_dir) / f"{cfg.folder().name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        p = spawn.Process(target=_child, args=(cfg, str(log_path)), name=f"bench-{cfg.target}")
        p.start()
        procs.append((cfg, p, log_path, time.perf_counter()))
        log(f"[{cfg.target}] started in parallel (through the tracker); log: {log_path}")
    for cfg in cfgs:
        if cfg in parallel:
            continue
        t0 = time.perf_counter()
        try:
            res = run_bench(cfg, progress=progress, log=log)
            outcomes[cfg.target] = TargetOutcome(cfg.target, res.folder, res.rows, seconds=time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - one target's failure is reported, the others go on
            outcomes[cfg.target] = TargetOutcome(cfg.target, None, [], f"{type(e).__name__}: {e}",
                                                 seconds=time.perf_counter() - t0)
            log(f"[{cfg.target}] FAILED: {e}")
    for cfg, p, log_path, t0 in procs:
        p.join()
        error = "" if p.exitcode == 0 else (f"exit code {p.exitcode}; last lines of {log_path}:\n"
                                            + "\n".join(log_path.read_text().splitlines()[-5:]))
        outcomes[cfg.target] = TargetOutcome(cfg.target, cfg.folder(), _read_rows(cfg), error, parallel=True,
                                             seconds=time.perf_counter() - t0)
        log(f"[{cfg.target}] {'done' if not error else 'FAILED: ' + error} ({time.perf_counter() - t0:.0f} s)")
    if any(o.rows for o in outcomes.values()):
        log(f"comparison: {write_comparison(Path(first.results_dir))}")
    return [outcomes[c.target] for c in cfgs]


def outcome_summary(outcomes: list[TargetOutcome]) -> str:
    """The summary table of every target's rows, then one line per target: its folder or its error."""
    import pandas as pd

    from harness.report import summary_table

    rows = [r for o in outcomes for r in o.rows]
    lines = [summary_table(pd.DataFrame(rows)), ""] if rows else []
    for o in outcomes:
        how = "in parallel, " if o.parallel else ""
        lines.append(f"{o.target}: {o.folder if not o.error else 'FAILED: ' + o.error.splitlines()[0]} "
                     f"({how}{o.seconds:.0f} s)")
    return "\n".join(lines)
