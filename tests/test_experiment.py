"""The experiment end to end in quick mode: every method runs, the outputs are written and consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from laaq.experiment import ExperimentConfig, combine, run_experiment
from laaq.quant.plan import QuantPlan


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, str, Path]:
    out = tmp_path_factory.mktemp("exp")
    cfg = ExperimentConfig.quick()
    df, summary = run_experiment(cfg, out, progress=False, cache_dir=tmp_path_factory.mktemp("ckpt"))
    return df, summary, out


def test_outputs_written(quick_run: tuple[pd.DataFrame, str, Path]) -> None:
    df, summary, out = quick_run
    for f in ("results.csv", "summary.csv", "results.md", "results.png"):
        assert (out / f).stat().st_size > 0
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temp files behind
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "| pgd-at | laaq |" in md and "F2" in md and "F1" in md
    assert "F1" in summary and "F2 [pgd-at]" in summary


def test_every_method_at_the_budget(quick_run: tuple[pd.DataFrame, str, Path]) -> None:
    df, _, out = quick_run
    for model in ("plain", "pgd-at"):
        methods = set(df[df.model == model].method)
        assert {"fp32", "uniform-8", "uniform", "mse", "hessian", "sensitivity", "laaq", "random"} <= methods
    q = df[~df.method.isin(["fp32", "uniform-8"])]
    assert (q.avg_bits <= 4.0 + 1e-6).all()
    assert ((df.clean >= 0) & (df.clean <= 1) & (df.robust <= df.clean)).all()
    assert ((df.robust_lo <= df.robust) & (df.robust <= df.robust_hi)).all()  # Wilson intervals per row
    assert (df[df.method == "random"].groupby("model").size() == 4).all()  # 2 draws x 2 seeds
    plan = QuantPlan.from_file(out / "plans" / "pgd-at-s0-laaq.json")
    assert plan.meta["method"] == "laaq" and float(plan.meta["spend_avg_bits"]) <= 4.0 + 1e-6


def test_differences_have_paired_intervals(quick_run: tuple[pd.DataFrame, str, Path]) -> None:
    df, summary, out = quick_run
    diffs = pd.read_csv(out / "differences.csv")
    laaq = diffs[(diffs.model == "pgd-at") & (diffs.method == "laaq")]
    assert {"uniform", "mse", "hessian", "sensitivity", "random"} <= set(laaq.baseline)
    assert ((diffs.boot_lo <= diffs["diff"] + 1e-9) & (diffs["diff"] <= diffs.boot_hi + 1e-9)).all()
    covers = (diffs.boot_lo <= 0) & (diffs.boot_hi >= 0) | (diffs.t_lo <= 0) & (diffs.t_hi >= 0)
    assert ((diffs.verdict == "not distinguishable") == covers).all()  # a difference needs both intervals
    assert (diffs.n_seeds == 2).all() and (diffs.n_images == 100).all()
    # the point estimate is the mean over seeds of the per-seed accuracy differences
    at = df[df.model == "pgd-at"]
    expect = (at[at.method == "laaq"].set_index("seed").robust - at[at.method == "uniform"].set_index("seed").robust)
    got = laaq[laaq.baseline == "uniform"]["diff"].iloc[0]
    assert abs(got - expect.mean()) < 1e-9
    assert "95 % intervals (paired bootstrap over seeds x images; t over seeds)" in summary
    with np.load(out / "per_image.npz") as z:
        assert "pgd-at|0|laaq" in z.files and z["pgd-at|0|laaq"].shape == (100,)
        assert abs(z["pgd-at|0|laaq"].mean() - at[(at.method == "laaq") & (at.seed == 0)].robust.iloc[0]) < 1e-9


def test_combine_merges_runs_of_disjoint_seeds(quick_run, tmp_path: Path) -> None:
    df, _, out = quick_run
    parts = []
    for seed in (0, 1):  # split the run into two one-seed folders, as parallel processes would write them
        d = tmp_path / f"s{seed}"
        d.mkdir()
        df[df.seed == seed].to_csv(d / "results.csv", index=False)
        with np.load(out / "per_image.npz") as z:
            np.savez(d / "per_image.npz", **{k: z[k] for k in z.files if k.split("|")[1] == str(seed)})
        parts.append(d)
    merged, summary = combine(parts, ExperimentConfig.quick(), tmp_path / "all")
    assert len(merged) == len(df)
    assert pd.read_csv(tmp_path / "all" / "differences.csv").equals(pd.read_csv(out / "differences.csv"))
