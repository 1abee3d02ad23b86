"""`laaq-bench search` writes a plan that respects its budget and that `bench --plan` compiles."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from harness.cli import main
from laaq.quant.plan import QuantPlan

TRAIN = ["--dataset", "digits", "--arch", "tinycnn", "--epochs", "6", "--lr", "0.01", "--eps", "0.1"]


def test_search_then_bench_the_plan(tmp_path) -> None:
    """A per-channel-group plan (``--group-size 4``) searched, then compiled and run bit-exactly by bench."""
    plan_path = tmp_path / "plan.json"
    r = CliRunner().invoke(main, ["search", *TRAIN, "--method", "laaq", "--avg-bits", "4", "--calib-samples", "48",
                                  "--group-size", "4", "--out", str(plan_path)])
    assert r.exit_code == 0, r.output
    plan = QuantPlan.from_file(plan_path)
    assert plan.meta["method"] == "laaq" and float(plan.meta["spend_avg_bits"]) <= 4.0 + 1e-9
    assert plan.meta["group_size"] == "4"
    r = CliRunner().invoke(main, ["bench", *TRAIN, "--variants", "int8", "--plan", str(plan_path), "--eval-samples",
                                  "64", "--batch-large", "16", "--repeat", "2", "--number", "2", "--warmup", "1",
                                  "--attack", "quick", "--quiet", "--results-dir", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    (folder,) = list((tmp_path / "res").iterdir())
    df = pd.read_csv(folder / "metrics.csv").set_index("variant")
    row = df.loc[f"plan:{plan.name}"]
    assert row.bitexact == 1.0 and row.avg_weight_bits <= 4.0 + 1e-9


def test_search_unknown_budget_combination_is_clear(tmp_path) -> None:
    r = CliRunner().invoke(main, ["search", *TRAIN, "--method", "mse", "--avg-bits", "1.5", "--calib-samples", "16",
                                  "--out", str(tmp_path / "p.json")])
    assert r.exit_code != 0 and "Error" in r.output and not (tmp_path / "p.json").exists()
