"""The experiment end to end in quick mode: every method at every budget, F1, paired differences, the
outputs, and resuming after an interruption (each finished unit is a file; a re-run redoes nothing)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import laaq.experiment.run as exp_run
from laaq.experiment import F2_METHODS, ExperimentConfig, StateMismatch, combine, run_experiment
from laaq.quant.plan import QuantPlan


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[pd.DataFrame, str, Path]:
    out = tmp_path_factory.mktemp("exp")
    df, summary = run_experiment(ExperimentConfig.quick(), out, progress=False, cache_dir=cache)
    return df, summary, out


def test_outputs_written(quick_run: tuple[pd.DataFrame, str, Path]) -> None:
    df, summary, out = quick_run
    for f in ("results.csv", "summary.csv", "differences.csv", "f1.csv", "search_cost.csv", "results.md",
              "results.png"):
        assert (out / f).stat().st_size > 0, f
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temp files behind
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for part in ("| pgd-at | bits3 | laaq |", "| pgd-at | bops0.5 | laaq |", "## F1", "## Weight kurtosis",
                 "## Search cost", "best ("):
        assert part in md, part
    assert "F2 [pgd-at, bits3]" in summary and "Goal" in summary and "F1 [pgd-at" in summary
    assert "Search cost" in summary


def test_every_method_at_every_budget(quick_run: tuple[pd.DataFrame, str, Path]) -> None:
    df, _, out = quick_run
    cfg = ExperimentConfig.quick()
    for model in ("plain", "pgd-at"):
        for budget in ("bits3", "bops0.5"):
            got = set(df[(df.model == model) & (df.budget == budget)].method)
            assert got == set(F2_METHODS), (model, budget, got)
        f1 = set(df[(df.model == model) & (df.budget == "f1")].method)
        assert f1 == {f"w{b}-{m}" for b in cfg.f1_bits for m in ("maxabs", "mse")}
    assert (df[df.budget == "bits3"].avg_bits <= 3 + 1e-6).all()
    assert (df[df.budget == "bops0.5"].bops_frac <= 0.5 + 1e-6).all()
    assert ((df.clean >= 0) & (df.clean <= 1) & (df.robust <= df.clean)).all()
    assert ((df.robust_lo <= df.robust) & (df.robust <= df.robust_hi)).all()  # Wilson intervals per row
    # the plain model is evaluated at its matched radius, the PGD-AT model at the data set's
    assert (df[df.model == "pgd-at"].eps == cfg.evaluation.eps).all()
    assert set(df[df.model == "plain"].eps) <= set(cfg.eps_grid)
    rb = df[(df.method == "random-best") & (df.model == "pgd-at")]
    assert (rb.search_s > 0).all()
    for seed in (0, 1):  # equal compute: as many random plans as LAAQ's refinement evaluated
        laaq = QuantPlan.from_json(_unit(out, f"pgd-at__{seed}__bits3__laaq").plan)
        best = QuantPlan.from_json(_unit(out, f"pgd-at__{seed}__bits3__random-best").plan)
        assert int(best.meta["draws"]) == max(cfg.random_count, int(laaq.meta["refine_evals"]))


def _unit(out: Path, name: str):
    from laaq.experiment.store import Unit

    return Unit.from_json((out / "units" / f"{name}.json").read_text())


def test_refined_plan_scored_on_holdout(quick_run: tuple[pd.DataFrame, str, Path]) -> None:
    _, _, out = quick_run
    unit = _unit(out, "pgd-at__0__bits3__laaq")
    plan = QuantPlan.from_json(unit.plan)
    assert plan.meta["method"] == "laaq" and plan.meta["refine_on"] == "holdout"
    assert float(plan.meta["spend_avg_bits"]) <= 3.0 + 1e-6


def test_differences_have_paired_intervals(quick_run: tuple[pd.DataFrame, str, Path]) -> None:
    df, _, out = quick_run
    diffs = pd.read_csv(out / "differences.csv")
    laaq = diffs[(diffs.model == "pgd-at") & (diffs.method == "laaq") & (diffs.budget == "bits3")]
    assert {"uniform", "uniform-clip", "mse", "hessian", "sensitivity", "random-best"} <= set(laaq.baseline)
    assert laaq.baseline.str.startswith("best (").sum() == 1
    assert ((diffs.boot_lo <= diffs["diff"] + 1e-9) & (diffs["diff"] <= diffs.boot_hi + 1e-9)).all()
    assert (diffs.verdict == "no verdict (2 seeds)").all()  # two seeds can agree by chance: no verdict
    assert (diffs.n_seeds == 2).all() and (diffs.n_images == 100).all()
    at = df[(df.model == "pgd-at") & (df.budget == "bits3")]
    expect = (at[at.method == "laaq"].set_index("seed").robust - at[at.method == "uniform"].set_index("seed").robust)
    assert abs(laaq[laaq.baseline == "uniform"]["diff"].iloc[0] - expect.mean()) < 1e-9
    with np.load(out / "per_image.npz") as z:
        key = "pgd-at|0|bits3|laaq"
        assert z[key].shape == (100,)
        assert abs(z[key].mean() - at[(at.method == "laaq") & (at.seed == 0)].robust.iloc[0]) < 1e-9


def test_resume_after_interruption(quick_run, cache: Path, tmp_path: Path, monkeypatch) -> None:
    """Killed after three units, the re-run does only the rest, and its numbers equal an uninterrupted run's."""
    df_full, _, _ = quick_run
    cfg = replace(ExperimentConfig.quick(), seeds=(0,), models=("pgd-at",))
    real = exp_run.evaluate
    calls = {"n": 0}

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(exp_run, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path, progress=False, cache_dir=cache)
    assert len(list((tmp_path / "units").glob("*.json"))) == 3
    counted = {"n": 0}

    def counting(*a, **kw):
        counted["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(exp_run, "evaluate", counting)
    df, _ = run_experiment(cfg, tmp_path, progress=False, cache_dir=cache)
    n_units = 1 + 2 * len(F2_METHODS) + 2 * len(cfg.f1_bits)
    assert len(df) == n_units and counted["n"] == n_units - 3
    full = df_full[(df_full.model == "pgd-at") & (df_full.seed == 0)].set_index(["budget", "method"]).sort_index()
    mine = df.set_index(["budget", "method"]).sort_index()
    assert (full.robust == mine.robust).all() and (full.clean == mine.clean).all()
    counted["n"] = 0
    run_experiment(cfg, tmp_path, progress=False, cache_dir=cache)
    assert counted["n"] == 0  # everything finished: nothing is redone
    with pytest.raises(StateMismatch, match="another configuration"):
        run_experiment(replace(cfg, n_eval=50), tmp_path, progress=False, cache_dir=cache)


def test_combine_merges_runs_of_disjoint_seeds(quick_run, tmp_path: Path) -> None:
    df, _, out = quick_run
    parts = []
    for seed in (0, 1):  # split the units into two one-seed folders, as parallel processes would write them
        d = tmp_path / f"s{seed}"
        (d / "units").mkdir(parents=True)
        (d / "state.json").write_bytes((out / "state.json").read_bytes())
        for p in (out / "units").glob(f"*__{seed}__*.json"):
            (d / "units" / p.name).write_bytes(p.read_bytes())
        parts.append(d)
    merged, _ = combine(parts, ExperimentConfig.quick(), tmp_path / "all")
    assert len(merged) == len(df)
    a = pd.read_csv(tmp_path / "all" / "differences.csv")
    b = pd.read_csv(out / "differences.csv")
    assert a.sort_values(list(a.columns[:4])).reset_index(drop=True).equals(
        b.sort_values(list(b.columns[:4])).reset_index(drop=True))


def _synthetic(seeds: int, gap: float, drop: tuple[str, int] | None = None) -> tuple[pd.DataFrame, dict]:
    """Rows and per-image outcomes of every F2 method at one budget: LAAQ right on ``gap`` more images."""
    rng = np.random.default_rng(0)
    rows, outcomes = [], {}
    for s in range(seeds):
        base = rng.random(400) < 0.6
        for m in F2_METHODS:
            if drop == (m, s):
                continue
            v = base | (rng.random(400) < gap) if m == "laaq" else base.copy()
            outcomes[f"pgd-at|{s}|bits3|{m}"] = v
            rows.append({"model": "pgd-at", "seed": s, "budget": "bits3", "method": m, "clean": 0.9,
                         "robust": float(v.mean()), "avg_bits": 3.0, "bops_frac": 0.4, "search_s": 1.0, "eps": 0.3})
    return pd.DataFrame(rows), outcomes


def test_verdicts_need_both_intervals_and_three_seeds() -> None:
    from laaq.experiment.analysis import differences

    d = differences(*_synthetic(5, 0.2))
    best = d[(d.method == "laaq") & d.baseline.str.startswith("best")].iloc[0]
    assert best.verdict == "distinguishable" and best["diff"] > 0.05
    covers = (d.boot_lo <= 0) & (d.boot_hi >= 0) | (d.t_lo <= 0) & (d.t_hi >= 0)
    assert ((d.verdict == "not distinguishable") == covers).all()  # laaq-ilp equals the baselines here
    assert (differences(*_synthetic(2, 0.2)).verdict == "no verdict (2 seeds)").all()


def test_partial_run_is_compared_on_complete_blocks_only() -> None:
    from laaq.experiment.analysis import complete_blocks

    df, _ = _synthetic(4, 0.1, drop=("mse", 2))  # seed 2 lost its mse unit (e.g. killed midway)
    kept = complete_blocks(df, F2_METHODS)
    assert set(kept.seed) == {0, 1, 3} and len(kept) == 3 * len(F2_METHODS)


def test_grouped_methods_run_and_are_compared(cache: Path, tmp_path: Path) -> None:
    """``mse@g2`` (per-channel-group widths) runs beside ``mse``, spends the same budget, and grouped LAAQ
    is compared with grouped and per-layer baselines alike."""
    from laaq.experiment.analysis import differences
    from laaq.experiment.config import split_method

    cfg = replace(ExperimentConfig.quick(), seeds=(0,), models=("pgd-at",), f1_bits=(), bops_fractions=(),
                  methods=("mse", "mse@g2"))
    df, _ = run_experiment(cfg, tmp_path, progress=False, cache_dir=cache)
    g = df[df.method == "mse@g2"].iloc[0]
    assert g.avg_bits <= 3.0 + 1e-9 and "×" in g.plan  # grouped layers are written per group
    assert split_method("laaq-ilp@g16") == ("laaq-ilp", 16)
    with pytest.raises(ValueError, match="unknown method"):
        split_method("laaq@gx")
    rows, outcomes = _synthetic(3, 0.2)
    rng = np.random.default_rng(1)
    for s in range(3):
        for m in ("mse@g8", "laaq@g8"):
            v = rng.random(400) < (0.9 if m == "mse@g8" else 0.5)
            outcomes[f"pgd-at|{s}|bits3|{m}"] = v
            rows.loc[len(rows)] = {**rows.iloc[0].to_dict(), "seed": s, "method": m, "robust": float(v.mean())}
    d = differences(rows, outcomes)
    assert {"laaq", "laaq-ilp", "norm-product", "laaq@g8"} == set(d.method)  # LAAQ and its variants
    assert "mse@g8" in set(d.baseline) and (d.baseline == "best (mse@g8)").any()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_attack_gap_script_compares_per_image(quick_run, cache: Path, tmp_path: Path, executor: str) -> None:
    """benchmarks/attack_gap.py re-attacks stored plans on the same images and writes the per-plan gap
    (in this process, or as Ray tasks: the same figures)."""
    import shutil
    import subprocess
    import sys

    _, _, out = quick_run
    folder = tmp_path / "exp"
    shutil.copytree(out, folder)
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "benchmarks/attack_gap.py", str(folder), "--quick", "--budget", "bits3",
                        "--methods", "mse,laaq", "--attack", "quick", "--cache-dir", str(cache),
                        "--executor", executor], cwd=root,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    gap = pd.read_csv(folder / "attack_gap.csv")
    assert list(gap.method) == ["fp32", "mse", "laaq"] and (gap.n == 100).all()
    # the quick experiment's own attack is "quick" (seeded): the same attack again finds the same examples
    assert (gap.grid_attack == "quick").all() and (gap.robust_grid == gap.robust_strong).all()
    assert (gap.only_strong_broke == 0).all() and (gap.only_grid_broke == 0).all()


def test_oracle_baseline_takes_the_best_baseline_of_each_seed() -> None:
    """The per-seed oracle picks, per seed, the baseline that scored highest there (here: a different one each
    seed), so it is at least as strong as any single baseline."""
    from laaq.experiment.analysis import ORACLE, differences

    rows, outcomes = _synthetic(3, 0.0)
    for s, winner in enumerate(("mse", "hessian", "sensitivity")):
        outcomes[f"pgd-at|{s}|bits3|{winner}"] = np.ones(400, bool)
    d = differences(rows, outcomes)
    o = d[(d.method == "laaq") & (d.baseline == ORACLE)].iloc[0]
    single = d[(d.method == "laaq") & d.baseline.isin(["mse", "hessian", "sensitivity"])]["diff"]
    assert o["diff"] < single.min() and o["diff"] == pytest.approx(-0.4, abs=0.05)


def test_plain_radius_matched_on_held_out_training_images_with_the_evaluation_preset(
        quick_run: tuple[pd.DataFrame, str, Path]) -> None:
    """F1's radius: the evaluation's own preset, on training images that neither model trained on and no
    calibration saw (never test images)."""
    import torch

    from laaq.data import load_dataset
    from laaq.experiment.run import held_out

    _, _, out = quick_run
    cfg = ExperimentConfig.quick()
    row = _unit(out, "plain__0__match__eps").row
    assert row["on"] == "held-out training images" and row["preset"] == cfg.evaluation.preset.name
    data = load_dataset(cfg.dataset, seed=0)
    train, x, _ = held_out(data)
    assert int(row["images"]) == len(x) and len(train.x_train) + len(x) == len(data.x_train)
    assert torch.equal(x, data.x_train[-len(x):]) and torch.equal(train.x_train, data.x_train[:-len(x)])


def test_bops_budget_levels_and_protocol_in_the_digest() -> None:
    cfg = replace(ExperimentConfig.quick(), budgets=(2.5, 3.0), bops_fractions=(0.3, 0.5))
    assert cfg.budget_labels() == ["bits2.5", "bits3", "bops0.3", "bops0.5"]
    assert ExperimentConfig().budget_labels()[-3:] == ["bops0.3", "bops0.4", "bops0.5"]
    assert cfg.digest() == replace(cfg, bops_fractions=(0.4,)).digest()  # budgets are in each unit's key
    assert "norm-product" in ExperimentConfig().methods and "norm-product" not in ExperimentConfig.cifar("x").methods


def _synthetic_table(cfg: ExperimentConfig, cache: Path) -> tuple[tuple[str, int, float], ...]:
    """An AVX2-like table for the quick model: the first layer pays only at 8 bits (8: 2 ms, ≤ 7: 1 ms), the others
    pay per bit — so latency budgets bind and differ from the bit and BOPs ones."""
    from laaq.data import load_dataset
    from laaq.importer import model_graph
    from laaq.models import build_model

    data = load_dataset(cfg.dataset)
    names = [n.name for n in model_graph(build_model(cfg.arch, data.input_shape, data.num_classes),
                                         data.input_shape).weighted()]
    rows = [(names[0], b, 2.0 if b == 8 else 1.0) for b in range(2, 9)]
    rows += [(n, b, 0.25 * b) for n in names[1:] for b in range(2, 9)]
    return tuple(rows)


def test_latency_budgets_bind_are_reported_and_redone_under_another_table(cache: Path, tmp_path: Path) -> None:
    from laaq.experiment import write_outputs
    from laaq.experiment.config import budget_for, latency_range

    base = replace(ExperimentConfig.quick(), seeds=(0,), models=("pgd-at",), budgets=(3.0,), bops_fractions=(),
                   methods=("uniform", "output-error", "laaq-ilp"), f1_bits=())
    cfg = replace(base, latency_fractions=(0.5,), latency_table=_synthetic_table(base, cache),
                  latency_source="synthetic table (test)")
    assert cfg.budget_labels() == ["bits3", "lat0.5"] and cfg.digest() == base.digest()
    fast, int8 = latency_range(cfg.latency())
    limit = budget_for("lat0.5", 1.0, cfg.latency()).constraints[0].limit
    assert limit == pytest.approx(fast + 0.5 * (int8 - fast))
    df, summary = run_experiment(cfg, tmp_path, progress=False, cache_dir=cache)
    lat = df[df.budget == "lat0.5"]
    assert set(lat.method) == set(cfg.methods)
    assert (lat.latency_ms <= limit + 1e-9).all() and (lat.latency_frac < 1).all()
    assert (df[df.budget != "fp32"].weight_kib > 0).all() and df[df.budget == "bits3"].latency_ms.notna().all()
    md = (tmp_path / "results.md").read_text()
    assert "| pgd-at | lat0.5 | laaq-ilp |" in md and "synthetic table (test)" in md
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "By budget kind [pgd-at, measured latency]" not in summary  # only LAAQ itself is summarised by kind
    # another table: the latency units are redone, the others kept (same digest, same folder)
    other = replace(cfg, latency_table=tuple((n, b, ms * 2) for n, b, ms in cfg.latency_table))
    assert exp_run.pending(other, exp_run.UnitStore(tmp_path, other.digest(), ""), "pgd-at", 0) == \
        [("lat0.5", m) for m in exp_run._ordered(cfg.methods)]
    assert len(write_outputs(other, tmp_path)[0].query("budget == 'lat0.5'")) == 0


def test_by_kind_answers_both_questions() -> None:
    from laaq.experiment.analysis import by_kind

    diffs = pd.DataFrame([
        {"model": "pgd-at", "budget": b, "method": "laaq", "baseline": base, "diff": d, "verdict": v}
        for b, base, d, v in (("bits3", "best (mse)", 0.05, "distinguishable"),
                              ("bits3", "output-error", -0.01, "not distinguishable"),
                              ("lat0.5", "best (mse)", -0.04, "distinguishable"),
                              ("lat0.5", "output-error", 0.0, "no verdict (2 seeds)"))])
    lines = by_kind(diffs, "pgd-at")
    assert lines[0].startswith("By budget kind [pgd-at, average weight bits]: LAAQ vs the best baseline: better at 1")
    assert "vs output-error: better at 0, worse at 0, not distinguishable or no verdict at 1 of 1" in lines[0]
    assert "measured latency" in lines[1] and "worse at 1" in lines[1]


def test_latency_table_is_measured_on_the_target_for_the_grid(private_cache) -> None:
    """`experiment --latency-target x86-avx2`: the real per-layer table (TVM, timed natively), every layer at every
    candidate width; widths that share a kernel (≤ 7 bits: vpmaddubsw) share a time."""
    from harness.cli_experiment import with_latency_table
    from laaq.search.solver import CANDIDATE_BITS

    cfg = with_latency_table(ExperimentConfig.quick(), (0.5,), "x86-avx2")
    table = cfg.latency()
    assert cfg.budget_labels()[-1] == "lat0.5" and cfg.latency_source.startswith("x86-avx2, native")
    assert all(sorted(row) == sorted(CANDIDATE_BITS) and min(row.values()) > 0 for row in table.values())
    assert all(len({row[b] for b in CANDIDATE_BITS if b <= 7}) == 1 for row in table.values())
    with pytest.raises(ValueError, match="positions must lie in"):
        with_latency_table(ExperimentConfig.quick(), (1.5,), "x86-avx2")
