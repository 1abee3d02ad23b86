"""The LAAQ experiment: LAAQ vs every baseline at several budgets (F2), uniform widths on plain vs PGD-AT
models (F1), resumable unit by unit. Entry points: :func:`run_experiment` and :func:`combine`.

Outputs in ``out_dir`` (each written atomically): ``units/`` (one JSON per finished unit — the resumable
state), ``results.csv`` (one row per unit), ``summary.csv``, ``differences.csv``, ``f1.csv``,
``per_image.npz`` (robust outcome per image), ``results.md``, ``results.png`` (robust accuracy vs budget) and
``pareto.png`` (robust accuracy vs each plan's latency on the table's target, or BOPs, per method).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from laaq.data import load_dataset

from .analysis import aggregate, answers, complete_blocks, differences, f1_table, kurtosis_table, search_cost
from .config import BASELINES, F2_METHODS, MODEL_KINDS, ExperimentConfig, budget_for
from .executor import Executor, ExecutorError, make_executor
from .report import compute_section, markdown, plot, plot_pareto
from .run import rows_and_outcomes, run_grid, twin_for
from .store import StateMismatch, UnitStore, atomic_write

__all__ = ["BASELINES", "F2_METHODS", "MODEL_KINDS", "Executor", "ExecutorError", "ExperimentConfig", "StateMismatch",
           "budget_for", "combine", "make_executor", "run_experiment", "twin_for", "write_outputs"]


def _store(cfg: ExperimentConfig, out: Path) -> UnitStore:
    return UnitStore(out, cfg.digest(), json.dumps(asdict(cfg), default=str))


def run_experiment(cfg: ExperimentConfig | None = None, out_dir: str | Path = "results/experiment",
                   progress: bool = True, cache_dir: Path | None = None, executor: Executor | None = None,
                   device: str = "cpu") -> tuple[pd.DataFrame, str]:
    """Run every unfinished unit of ``cfg`` into ``out_dir``, then write the tables; returns (rows, summary).

    ``executor``: who computes the units (:mod:`laaq.experiment.executor`; default: this process, in order);
    ``device``: where the attacks run (``cpu`` or ``cuda``)."""
    cfg = cfg or ExperimentConfig()
    data = load_dataset(cfg.dataset, seed=0, data_dir=cfg.data_dir)  # a wrong --data-dir fails before state.json
    store = _store(cfg, Path(out_dir))
    run_grid(cfg, store, progress, cache_dir, executor=executor, device=device, data=data)
    return write_outputs(cfg, Path(out_dir))


def write_outputs(cfg: ExperimentConfig, out: Path) -> tuple[pd.DataFrame, str]:
    """Tables, per-image outcomes, markdown and plot from the finished units that belong to ``cfg``."""
    rows, outcomes = rows_and_outcomes(cfg, _store(cfg, out))
    df = pd.DataFrame(rows)
    if df.empty:
        raise RuntimeError(f"no finished experiment units in {out}")
    df = complete_blocks(df, cfg.methods).reset_index(drop=True)
    agg, diffs, f1 = aggregate(df), differences(df, outcomes), f1_table(df)
    kurt, cost = kurtosis_table(df), search_cost(df)
    summary = answers(df, diffs, f1, cost)
    atomic_write(out / "per_image.npz", lambda t: _save_npz(t, outcomes))
    for name, table in (("results", df), ("summary", agg), ("differences", diffs), ("f1", f1), ("search_cost", cost)):
        atomic_write(out / f"{name}.csv", lambda t, table=table: table.to_csv(t, index=False))
    text = markdown(agg, diffs, f1, kurt, cost, cfg, summary) + compute_section(df)
    atomic_write(out / "results.md", lambda t: Path(t).write_text(text))
    atomic_write(out / "results.png", lambda t: plot(agg, t))
    atomic_write(out / "pareto.png", lambda t: plot_pareto(agg, t))
    return df, "\n".join(summary)


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **{k: v.astype(np.uint8) for k, v in arrays.items()})


def combine(run_dirs: list[str | Path], cfg: ExperimentConfig, out_dir: str | Path) -> tuple[pd.DataFrame, str]:
    """Merge the units of runs made in parallel (e.g. one process per seed, same configuration) into one
    folder and write its tables; the seeds are those found."""
    out = Path(out_dir)
    store = _store(cfg, out)
    seeds: set[int] = set()
    for d in run_dirs:
        _store(cfg, Path(d))  # refuses a folder of another configuration
        for p in sorted((Path(d) / "units").glob("*.json")):
            seeds.add(int(p.name.split("__")[1]))
            if not (store.dir / p.name).exists():
                store.dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, store.dir / p.name)
    return write_outputs(replace(cfg, seeds=tuple(sorted(seeds))), out)
