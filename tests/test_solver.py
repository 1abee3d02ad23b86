"""The knapsack solver: every budget kind is respected, and the optimum is the brute-force optimum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from laaq.quant.plan import LayerSetting
from laaq.search.solver import (
    Budget,
    BudgetError,
    CostConstraint,
    LayerStats,
    candidate_settings,
    feasible,
    latency_budget,
    make_plan,
    refine,
    solve,
    spend,
)

STATS = {"a": LayerStats(params=100, macs=5000), "b": LayerStats(params=400, macs=1000),
         "c": LayerStats(params=50, macs=20000), "d": LayerStats(params=1000, macs=1000)}
SETTINGS = candidate_settings((2, 3, 4, 6, 8), (1.0, 0.7))
LATENCY = {n: {b: 0.1 * b * (i + 1) + 0.05 * b * b for b in (2, 3, 4, 5, 6, 8)} for i, n in enumerate(STATS)}


def random_costs(seed: int) -> dict[str, dict[LayerSetting, float]]:
    """Costs decreasing in bits (as real metrics are), with random per-layer sensitivity and clip effects."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in STATS:
        sens = rng.lognormal(0, 1.5)
        out[n] = {s: sens * 4.0 ** (-s.bits) * (1 + rng.uniform(-0.5, 0.5)) for s in SETTINGS}
    return out


BUDGETS = [
    Budget(avg_bits=4.0),
    Budget(avg_bits=3.5),
    Budget(model_bytes=600.0),
    Budget(bops=8 * 4.5 * sum(s.macs for s in STATS.values())),
    latency_budget(LATENCY, ms=9.0),
    Budget(avg_bits=5.0, constraints=(CostConstraint("latency_ms", LATENCY, 10.0),)),
]


def brute_force(costs: dict[str, dict[LayerSetting, float]], budget: Budget) -> float:
    best = np.inf
    names = list(STATS)
    for combo in itertools.product(SETTINGS, repeat=len(names)):
        alloc = dict(zip(names, combo, strict=True))
        if feasible(alloc, STATS, budget):
            best = min(best, sum(costs[n][s] for n, s in alloc.items()))
    return best


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: b.describe())
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solver_is_optimal_and_feasible(budget: Budget, seed: int) -> None:
    costs = random_costs(seed)
    alloc = solve(costs, STATS, budget)
    assert feasible(alloc, STATS, budget)
    got = sum(costs[n][s] for n, s in alloc.items())
    assert got == pytest.approx(brute_force(costs, budget), rel=1e-9)


def test_each_budget_kind_binds() -> None:
    """Tightening any one limit changes the plan to one that meets that limit."""
    costs = random_costs(5)
    used = spend(solve(costs, STATS, Budget(avg_bits=3.0)), STATS, Budget(avg_bits=3.0))
    assert used["avg_bits"] <= 3.0 + 1e-9
    b = Budget(model_bytes=1550 * 3 / 8)  # equivalent to 3 bits on average
    assert spend(solve(costs, STATS, b), STATS, b)["model_bytes"] <= 1550 * 3 / 8 + 1e-9
    b = Budget(bops=8 * 3 * 27000)
    assert spend(solve(costs, STATS, b), STATS, b)["bops"] <= 8 * 3 * 27000 + 1e-6
    b = latency_budget(LATENCY, 6.0)
    assert spend(solve(costs, STATS, b), STATS, b)["latency_ms"] <= 6.0 + 1e-9


def test_infeasible_budget_is_reported() -> None:
    with pytest.raises(BudgetError, match="no plan satisfies"):
        solve(random_costs(0), STATS, Budget(avg_bits=1.5))
    with pytest.raises(ValueError):
        Budget()


def test_plan_meta_and_refine_respects_budget() -> None:
    costs = random_costs(3)
    budget = Budget(avg_bits=4.0)
    alloc = solve(costs, STATS, budget)
    plan = make_plan(alloc, STATS, budget, "test", 0.5)
    assert plan.meta["method"] == "test" and float(plan.meta["spend_avg_bits"]) <= 4.0 + 1e-9
    assert list(plan.layers) == list(STATS)

    # an exact metric with an interaction the separable costs cannot see: a and b want equal bits
    def metric(al: dict[str, LayerSetting]) -> float:
        return sum(costs[n][s] for n, s in al.items()) + 0.01 * abs(al["a"].bits - al["b"].bits)

    refined, evals = refine(alloc, metric, SETTINGS, STATS, budget)
    assert evals > 1 and feasible(refined, STATS, budget)
    assert metric(refined) <= metric(alloc)
