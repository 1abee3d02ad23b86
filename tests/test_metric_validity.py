"""Metric validity (laaq.metric_validity) and the mid-size VGG8 model: fast, tiny models, few plans."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import laaq.metric_validity as mv
from laaq.attacks import PGDConfig
from laaq.graph import run_float
from laaq.metric_validity import (
    ValidityConfig,
    avg_bits,
    correlation_table,
    holdout_split,
    partial_spearman,
    rankdata,
    sample_plans,
    spearman,
)
from laaq.models import ARCHITECTURES, VGG8, build_model, randomize_bn_stats
from laaq.search import CalibrationRecipe
from laaq.train import TrainConfig

PARAMS = {"a": 100, "b": 300, "c": 400, "d": 200, "e": 10}


@pytest.mark.parametrize("lo,hi", [(2.5, 6.0), (3.0, 3.5), (2.0, 8.0)])
def test_plans_respect_budget_range_widths_and_clips(lo: float, hi: float) -> None:
    bits, clips = (2, 3, 4, 6, 8), (1.0, 0.7, 0.5)
    plans = sample_plans(PARAMS, 40, lo, hi, bits, clips, seed=3)
    assert len(plans) == 40
    for target, alloc in plans:
        assert set(alloc) == set(PARAMS)
        assert lo - 1e-9 <= avg_bits(alloc, PARAMS) <= min(target, hi) + 1e-9
        assert all(s.bits in bits and s.clip in clips for s in alloc.values())
    # spread over the range, and mixed (not all uniform)
    got = [avg_bits(a, PARAMS) for _, a in plans]
    if hi - lo > 1:
        assert max(got) - min(got) > 0.6 * (hi - lo)
    assert sum(len({s.bits for s in a.values()}) > 1 for _, a in plans) > 30
    # plan i does not depend on how many plans are drawn (so a run can be extended)
    assert sample_plans(PARAMS, 5, lo, hi, bits, clips, seed=3) == plans[:5]


def test_impossible_range_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be met"):
        sample_plans(PARAMS, 3, 8.5, 9.0, (2, 4, 8), (1.0,))


def test_spearman_hand_computed_and_against_scipy() -> None:
    assert rankdata(np.array([10.0, 30, 20, 20])).tolist() == [1.0, 4.0, 2.5, 2.5]
    # hand: ranks a = 1 2 3 4 5, b = 2 1 4 3 5 -> d^2 sum = 4 -> rho = 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 6, 30).astype(float), rng.normal(size=30)  # ties in a
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_correlation_table_on_known_synthetic_costs() -> None:
    rng = np.random.default_rng(1)
    bits = rng.uniform(2.5, 6, 60)
    drop = 1 / bits + rng.normal(0, 0.01, 60)  # damage falls with bits, plus a plan-specific part
    df = pd.DataFrame({"avg_bits": bits, "drop": drop, "cost_perfect": drop * 3 + 1, "cost_reversed": -drop,
                       "cost_noise": rng.normal(size=60)})
    t = correlation_table(df, ["perfect", "reversed", "noise"], reps=300).set_index("metric")
    assert t.loc["perfect", "rho"] == pytest.approx(1.0) and t.loc["perfect", "partial"] == pytest.approx(1.0)
    assert t.loc["reversed", "rho"] == pytest.approx(-1.0)
    assert t.loc["avg-bits", "rho"] > 0.8  # counting bits alone already ranks these plans well
    lo, hi = t.loc["noise", "rho_lo"], t.loc["noise", "rho_hi"]
    assert lo < t.loc["noise", "rho"] < hi and lo < 0 < hi
    # paired difference to a reference metric: same resampled plans for both
    d = correlation_table(df, ["perfect", "noise"], reps=300, reference="noise").set_index("metric")
    assert d.loc["noise", "d_ref"] == 0 and d.loc["noise", "d_ref_lo"] == 0
    assert d.loc["perfect", "d_ref"] == pytest.approx(1 - t.loc["noise", "rho"])
    assert d.loc["perfect", "d_ref_lo"] > 0
    # partial rho removes what avg bits explains: a cost that is just -bits has nothing left (nan or ~0)
    p = partial_spearman(-bits, drop, bits)
    assert np.isnan(p) or abs(p) < 1e-9


def test_holdout_split_never_contains_test_images(digits) -> None:
    s = holdout_split(digits, 100)
    assert len(s.x_test) == 100 and len(s.x_train) == len(digits.x_train) - 100
    assert torch.equal(s.x_test, digits.x_train[-100:]) and s.name != digits.name


def _tiny_config() -> ValidityConfig:
    return ValidityConfig(dataset="digits", n_val=120, n_eval=30, n_plans=4, eps=0.1, apgd_steps=3,
                          clips=(1.0, 0.7), metrics=("laaq", "mse", "sensitivity"), bootstrap=50,
                          train=TrainConfig(arch="tinycnn", epochs=1, lr=5e-3,
                                            pgd=PGDConfig(eps=0.1, step_size=0.05, steps=2)),
                          calibration=CalibrationRecipe(samples=32, attack_steps=2))


def test_resume_from_cached_csv(digits, tmp_path, private_cache, monkeypatch) -> None:
    cfg = _tiny_config()
    df1, _ = mv.run(digits, cfg, tmp_path, cache_dir=private_cache, log=lambda m: None, max_plans=2)
    assert len(df1) == 2
    csv = tmp_path / f"tinycnn-{cfg.digest()}" / "plans.csv"
    assert len(pd.read_csv(csv)) == 2
    calls = []
    real = mv.evaluate
    monkeypatch.setattr(mv, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    df2, corr = mv.run(digits, cfg, tmp_path, cache_dir=private_cache, log=lambda m: None)
    assert len(calls) == 2  # only the two missing plans were attacked (fp32 reference and costs cached)
    assert df2["plan"].tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(df2.iloc[:2][df1.columns], df1)
    assert set(corr["metric"]) == {"avg-bits", "laaq", "mse", "sensitivity"}
    assert (tmp_path / f"tinycnn-{cfg.digest()}" / "correlations.md").exists()
    # a different draw under the same folder name is refused, not mixed in
    rows = pd.read_csv(csv)
    rows.loc[0, "alloc"] = rows.loc[1, "alloc"] if rows.loc[0, "alloc"] != rows.loc[1, "alloc"] else "x:2b@1"
    rows.to_csv(csv, index=False)
    with pytest.raises(ValueError, match="differs"):
        mv.run(digits, cfg, tmp_path, cache_dir=private_cache, log=lambda m: None)
    assert cfg.digest() == replace(cfg, n_plans=10, bootstrap=9).digest()  # extending a run keeps its folder


def test_vgg8_layers_matter() -> None:
    assert "vgg8" in ARCHITECTURES
    graph = build_model("vgg8", (1, 28, 28), 10).to_graph()
    sizes = {n.name: n.weight.size for n in graph.weighted()}
    assert len(sizes) >= 6
    assert max(sizes.values()) / sum(sizes.values()) <= 0.40


def test_vgg8_graph_equals_module() -> None:
    torch.manual_seed(0)
    model = randomize_bn_stats(VGG8()).eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(run_float(model.to_graph(), x), model(x), atol=1e-5)


def test_recipes_are_the_cli_checkpoints() -> None:
    from harness.options import train_config
    from laaq.metric_validity import RECIPES

    assert train_config("mnist5k", "vgg8", 6, 3e-3, False, None, 0)[0] == RECIPES["vgg8"]
    assert train_config("mnist5k", "smallcnn", 6, None, False, None, 0)[0] == RECIPES["smallcnn"]
    assert train_config("mnist5k", None, 6, None, False, None, 0)[0] == RECIPES["vgg8"]  # the default model


def test_plans_on_ray_equal_plans_in_process(digits, tmp_path, private_cache) -> None:
    """The same plans attacked as Ray tasks: identical rows (outcomes), each with the node it ran on."""
    from laaq.experiment.executor import RayExecutor

    cfg = _tiny_config()
    local, _ = mv.run(digits, cfg, tmp_path / "local", cache_dir=private_cache, log=lambda m: None)
    on_ray, _ = mv.run(digits, cfg, tmp_path / "ray", cache_dir=private_cache, log=lambda m: None,
                       executor=RayExecutor(workers=2))
    cols = ["plan", "alloc", "avg_bits", "clean", "robust", "drop"]
    pd.testing.assert_frame_equal(on_ray[cols], local[cols])
    assert on_ray["node"].str.startswith("ray:").all()
