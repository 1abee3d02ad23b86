"""The attack ensemble on a small PGD-AT model: stronger than PGD-20, worst case per image, sane ε-curve,
masking flagged where gradients are shattered and not elsewhere, resumable, and bad input refused."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from laaq.attacks import PGDConfig
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_graph
from laaq.quant.twin import Twin
from laaq.robustness import PRESETS, AttackError, AttackPreset, EvalConfig, curve_radii, evaluate, get_preset
from laaq.train import TrainConfig, train_or_load

# the standard preset's members at smaller budgets: seconds on the tiny model, same code path
SMALL = AttackPreset("small", pgd_steps=20, apgd_ce_steps=30, apgd_t_steps=30, apgd_t_targets=3, square_queries=300,
                     check_samples=120, curve_samples=80, curve_steps=15)


@pytest.fixture(scope="module")
def at_model(digits, private_cache):
    """A small PGD-AT model that works (clean ~0.9 on digits): the conftest one is trained too briefly."""
    cfg = TrainConfig(arch="tinycnn", epochs=6, lr=1e-2, adversarial=True,
                      pgd=PGDConfig(eps=0.1, step_size=0.03, steps=3), seed=0)
    model, _, _ = train_or_load(digits, cfg, cache_dir=private_cache, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def twin_and_data(digits, at_model):
    graph = at_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), digits.x_train[:128])
    return Twin(qg).eval(), digits.x_test[:160], digits.y_test[:160]


@pytest.fixture(scope="module")
def result(twin_and_data, at_model):
    twin, x, y = twin_and_data
    return evaluate(twin, x, y, EvalConfig(SMALL, 0.1), transfer_source=at_model)


def test_ensemble_is_at_least_as_strong_as_pgd20(result) -> None:
    accs = result.member_accs()
    assert list(accs) == ["pgd-20", "apgd-ce", "apgd-t", "square"]
    assert result.clean_acc > 0.6 and 0 < accs["pgd-20"] < result.clean_acc  # a model worth attacking
    assert result.robust_acc <= accs["pgd-20"]
    lo, hi = result.interval()
    assert lo <= result.robust_acc <= hi


def test_worst_case_is_never_above_any_member(result) -> None:
    for name, alive in result.cumulative.items():
        assert not (result.robust & ~alive).any(), name  # per image: robust only if every member failed
    assert not (result.robust & ~result.clean).any()
    values = list(result.member_accs().values())
    assert values == sorted(values, reverse=True)


def test_worst_case_inputs_stay_in_the_ball(result, twin_and_data) -> None:
    _, x, y = twin_and_data
    assert (result.x_worst - x).abs().max() <= 0.1 + 1e-6
    assert result.x_worst.min() >= 0 and result.x_worst.max() <= 1
    with torch.no_grad():  # the stored inputs reproduce the verdicts on the deployed function
        ok = (twin_and_data[0](result.x_worst).argmax(1) == y).numpy()
    assert not (ok & ~result.robust & result.clean).any()


def test_eps_curve_is_monotone_and_reaches_zero(result) -> None:
    eps = [e for e, _, _ in result.curve]
    accs = [a for _, a, _ in result.curve]
    assert eps == curve_radii(0.1, SMALL.curve_factors) and len(eps) >= 5 and eps[-1] == 0.5
    assert all(b <= a + 2 / 80 for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] <= 0.05
    assert result.check("eps-curve").ok


def test_real_model_is_not_flagged(result) -> None:
    names = [c.name for c in result.checks]
    assert names == ["eps-curve", "black-box", "convergence", "transfer"]
    assert result.gradient_masking == "no", result.checks_str()
    assert all(c.ok for c in result.checks), result.checks_str()


class ShatteredGradients(torch.nn.Module):
    """A deliberately masked model: the forward pass is the real model's, the gradient is zero everywhere."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.detach()) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_masked_model_is_flagged(at_model, digits) -> None:
    masked = ShatteredGradients(at_model)
    preset = replace(SMALL, pgd_steps=10, apgd_ce_steps=10, apgd_t_steps=0, square_queries=500)
    r = evaluate(masked, digits.x_test[:120], digits.y_test[:120], EvalConfig(preset, 0.15))
    assert r.gradient_masking == "suspected", r.checks_str()
    assert r.member_accs()["square"] < r.member_accs()["apgd-ce"]  # Square's finds enter the worst case


def test_resumes_from_the_state_file(twin_and_data, tmp_path) -> None:
    twin, x, y = twin_and_data
    cfg = EvalConfig(replace(SMALL, apgd_t_steps=0, square_queries=50), 0.1, checks=False)
    state = tmp_path / "state.npz"
    first = evaluate(twin, x, y, cfg, state_path=state)
    assert state.exists() and {"pgd-20", "apgd-ce", "square"} <= set(first.seconds)
    again = evaluate(twin, x, y, cfg, state_path=state)
    assert set(again.seconds) == {"clean"}  # every attack stage came from the state file (the clean pass reruns)
    assert np.array_equal(again.robust, first.robust) and torch.equal(again.x_worst, first.x_worst)
    state.write_bytes(b"truncated by a killed run")
    third = evaluate(twin, x, y, cfg, state_path=state)  # a corrupt state file is ignored, not fatal
    assert np.array_equal(third.robust, first.robust)


def test_presets_round_trip() -> None:
    for name, preset in PRESETS.items():
        cfg = EvalConfig(preset, 0.3, seed=4)
        assert EvalConfig.from_dict(cfg.to_dict()) == cfg
        assert cfg.describe().startswith(f"{name}: L-inf eps=0.3")
    assert "FAB-T" in PRESETS["thorough"].describe(0.3) and "Square 2000 queries" in PRESETS["standard"].describe(0.3)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: EvalConfig(PRESETS["standard"], 0.0), "eps must be > 0"),
    (lambda: EvalConfig(PRESETS["standard"], -0.1), "eps must be > 0"),
    (lambda: EvalConfig(PRESETS["standard"], 1.5), "outside the data range"),
    (lambda: get_preset("strong"), "unknown attack preset 'strong'"),
    (lambda: PRESETS["standard"].with_square_queries(0), "query budget must be >= 1"),
    (lambda: AttackPreset("none"), "no white-box attack"),
])
def test_bad_evaluation_settings_are_refused(make, message) -> None:
    with pytest.raises(AttackError, match=message):
        make()


def test_missing_library_is_named(twin_and_data, monkeypatch) -> None:
    twin, x, y = twin_and_data
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(AttackError, match="torchattacks is missing: `pip install --no-deps"):
        evaluate(twin, x[:10], y[:10], EvalConfig(PRESETS["standard"], 0.1, checks=False))


def test_transfer_examples_crafted_once_and_shared(twin_and_data, at_model) -> None:
    """Two variants judged against one TransferCache: the float model is attacked for the first only (a copy of
    it — what a GPU evaluation attacks — finds the same entry), and the second's transfer check equals the
    one it computes with a cache of its own."""
    import copy

    from laaq.robustness import TransferCache

    twin, x, y = twin_and_data
    cfg = EvalConfig(replace(SMALL, square_queries=0, curve_samples=20, curve_steps=2), 0.1)
    calls = {"n": 0}
    counted = copy.deepcopy(at_model)
    counted.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    cache = TransferCache()
    evaluate(twin, x, y, cfg, transfer_source=counted, transfers=cache)
    crafted = calls["n"]
    assert crafted > 0
    shared = evaluate(twin, x, y, cfg, transfer_source=copy.deepcopy(counted), transfers=cache)
    assert calls["n"] == crafted  # the second evaluation attacked the float model not once
    alone = evaluate(twin, x, y, cfg, transfer_source=at_model)
    assert shared.check("transfer").detail == alone.check("transfer").detail
