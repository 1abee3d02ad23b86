"""The experiment end to end in quick mode: every method runs, the outputs are written and consistent."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from laaq.experiment import ExperimentConfig, run_experiment
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
    assert ((df.clean >= 0) & (df.clean <= 1) & (df.pgd <= df.clean + 0.05)).all()
    assert (df[df.method == "random"].groupby("model").size() == 2).all()
    plan = QuantPlan.from_file(out / "plans" / "pgd-at-s0-laaq.json")
    assert plan.meta["method"] == "laaq" and float(plan.meta["spend_avg_bits"]) <= 4.0 + 1e-6
