"""Refinement and the best-of-N baseline read only training images: the held-out set is disjoint from the
calibration images, refinement scores on adversarial versions of it re-crafted against the current plan's
twin every sweep, and the test split never reaches the search."""

from __future__ import annotations

from dataclasses import replace

import torch

import laaq.search.refinement as refinement
from laaq.importer import model_graph
from laaq.quant.plan import LayerSetting
from laaq.search import Budget, CalibrationRecipe, SearchConfig, search_plan


def _rows(a: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in a.flatten(1)}


def test_holdout_is_disjoint_training_data(digits, tiny_model) -> None:
    graph = model_graph(tiny_model, digits.input_shape)
    calib = CalibrationRecipe(samples=64, attack_steps=3, holdout=64).make(graph, digits.x_train, digits.y_train,
                                                                          0.1, 0, tiny_model)
    assert calib.x_hold is not None and len(calib.x_hold) == 64
    train, test = _rows(digits.x_train), _rows(digits.x_test)
    hold = _rows(calib.x_hold)
    # hold-out rows are training rows and none of the calibration rows; (a clause "not hold & test - train" stood
    # here: given hold <= train it could never fail.) Test rows can reach the hold-out only as exact duplicates
    # of training rows (8×8 digits repeat), so at most as many as such duplicates exist
    assert hold <= train and not hold & _rows(calib.x)
    assert len(hold & test) <= len(train & test)
    # without a hold-out the recipe is as before (same calibration images)
    plain = CalibrationRecipe(samples=64, attack_steps=3, holdout=0).make(graph, digits.x_train, digits.y_train, 0.1,
                                                                          0, tiny_model)
    assert plain.x_hold is None and torch.equal(plain.x, calib.x)


def test_refinement_scores_adaptive_holdout_examples(digits, tiny_model, monkeypatch) -> None:
    graph = model_graph(tiny_model, digits.input_shape)
    calib = CalibrationRecipe(samples=48, attack_steps=3, holdout=48).make(graph, digits.x_train, digits.y_train,
                                                                          0.1, 0, tiny_model)
    seen: list[torch.Tensor] = []
    crafted: list[torch.Tensor] = []
    real_loss, real_craft = refinement.adversarial_loss, refinement.adaptive_examples

    def spy_loss(g, alloc, x, y, **kw):
        seen.append(x)
        return real_loss(g, alloc, x, y, **kw)

    def spy_craft(g, alloc, c):
        crafted.append(real_craft(g, alloc, c))
        return crafted[-1]

    monkeypatch.setattr(refinement, "adversarial_loss", spy_loss)
    monkeypatch.setattr(refinement, "adaptive_examples", spy_craft)
    cfg = SearchConfig(clips=(1.0, 0.7), refine_sweeps=2, refine_max_evals=40, seed=0)
    plan = search_plan("laaq", graph, calib, Budget(avg_bits=4.0), cfg)
    assert plan.meta["refine_on"] == "holdout" and 1 <= len(crafted) <= 2
    assert seen and all(any(x is c for c in crafted) for x in seen)  # only ever the adaptive hold-out examples
    for x in crafted:  # each within eps of its held-out image, and inside [0, 1]
        assert float((x - calib.x_hold).abs().max()) <= 0.1 + 1e-6 and float(x.min()) >= 0 and float(x.max()) <= 1
    seen.clear()
    search_plan("laaq", graph, calib, Budget(avg_bits=4.0), replace(cfg, refine_on="calibration"))
    assert seen and all(x is calib.x_adv for x in seen)  # the old behaviour, kept as an option


def test_best_of_n_random_is_deterministic_and_within_budget(digits, tiny_model) -> None:
    graph = model_graph(tiny_model, digits.input_shape)
    calib = CalibrationRecipe(samples=48, attack_steps=3, holdout=0).make(graph, digits.x_train, digits.y_train, 0.1,
                                                                         0, tiny_model)
    cfg = SearchConfig(clips=(1.0, 0.7), random_count=6, seed=3)
    a = search_plan("random-best", graph, calib, Budget(avg_bits=3.0), cfg)
    b = search_plan("random-best", graph, calib, Budget(avg_bits=3.0), cfg)
    assert a.layers == b.layers and a.meta["draws"] == "6" and float(a.meta["spend_avg_bits"]) <= 3.0 + 1e-9
    u = search_plan("uniform-clip", graph, calib, Budget(avg_bits=4.0), cfg)
    assert {s.bits for s in u.layers.values()} == {4} and {s.clip for s in u.layers.values()} <= {1.0, 0.7}


def test_validation_images_are_disjoint_and_decide_whether_refinement_stays(digits, tiny_model, monkeypatch) -> None:
    """Refinement's plan replaces the knapsack's only if it is more robust on validation images that neither
    the cost tables nor refinement saw; a tie or a loss keeps the knapsack's plan."""
    import laaq.search as search

    graph = model_graph(tiny_model, digits.input_shape)
    calib = CalibrationRecipe(samples=48, attack_steps=3, holdout=48, validation=40).make(
        graph, digits.x_train, digits.y_train, 0.1, 0, tiny_model)
    val = _rows(calib.x_val)
    assert len(calib.x_val) == 40 and not val & _rows(calib.x) and not val & _rows(calib.x_hold)
    old = CalibrationRecipe(samples=48, attack_steps=3, holdout=48, validation=0).make(
        graph, digits.x_train, digits.y_train, 0.1, 0, tiny_model)
    assert old.x_val is None and torch.equal(old.x_hold, calib.x_hold)  # the other samples did not move
    cfg = SearchConfig(clips=(1.0, 0.7), refine_sweeps=1, refine_max_evals=40, seed=0)
    budget = Budget(avg_bits=9.0)  # every plan fits: the knapsack's and the stand-in refinement's below
    knapsack = search_plan("laaq", graph, calib, budget, replace(cfg, refine=False)).layers
    first = next(iter(knapsack))
    refined = {**knapsack, first: LayerSetting(2, 1.0)}
    monkeypatch.setattr(search, "refine", lambda alloc, *a, **k: (dict(refined), 3))  # a refinement that moved
    calls: list[dict] = []
    for score, kept in ((0.4, "knapsack"), (0.5, "knapsack"), (0.6, "refined")):
        def judge(g, layers, c, score=score):
            calls.append(dict(layers))
            assert c.x_val is calib.x_val
            return 0.5 if dict(layers) == knapsack else score
        monkeypatch.setattr(search, "validation_accuracy", judge)
        plan = search_plan("laaq", graph, calib, budget, cfg)
        assert plan.meta["refine_kept"] == kept and len(calls) == 2
        assert plan.layers == (refined if kept == "refined" else knapsack)
        calls.clear()
    # without validation images the refined plan stands, as before, and the meta says so
    plan = search_plan("laaq", graph, replace(calib, x_val=None, y_val=None), budget, cfg)
    assert plan.meta["refine_kept"] == "no validation images" and plan.layers == refined
