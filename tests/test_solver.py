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


def test_monotone_projection_cannot_make_a_narrow_width_free() -> None:
    """A noisy or negative narrow entry is lifted to the wider widths' cost, never carried up to them."""
    from laaq.quant.plan import LayerSetting
    from laaq.search.solver import monotone_in_bits

    s2, s4, s8 = (LayerSetting(b, 1.0) for b in (2, 4, 8))
    table = {"conv1": {s2: -5.0, s4: 1.0, s8: 0.5}, "fc": {s2: 3.0, s4: 2.0, s8: 2.5}}
    out = monotone_in_bits(table)
    assert out["conv1"] == {s2: 1.0, s4: 1.0, s8: 0.5}  # 2 bits costs what 4 bits costs, not -5 (free)
    assert out["fc"] == {s2: 3.0, s4: 2.5, s8: 2.5}
    for row in out.values():  # fewer bits never cheaper
        assert row[s2] >= row[s4] >= row[s8]


def test_hessian_uses_the_trace_magnitude(monkeypatch) -> None:
    """A negative Hutchinson trace must not turn a layer's cost into a reward for fewer bits."""
    import torch

    from laaq.importer import model_graph
    from laaq.models import build_model
    from laaq.search import baselines, candidate_settings

    g = model_graph(build_model("tinycnn", (1, 8, 8), 10).eval(), (1, 8, 8))
    names = [n.name for n in g.weighted()]
    monkeypatch.setattr(baselines, "hessian_traces", lambda *a, **k: {n: (-1.0 if i == 0 else 1.0)
                                                                         for i, n in enumerate(names)})
    st = candidate_settings((2, 4, 8), (1.0,))
    costs = baselines.hessian_costs(g, torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), st)
    first = costs[names[0]]
    assert all(v >= 0 for v in first.values()) and first[st[0]] > first[st[-1]]


def test_output_error_baseline_measures_the_real_logit_change_and_stores_its_table() -> None:
    import json

    import torch

    from laaq.importer import model_graph
    from laaq.models import build_model
    from laaq.quant.quantizers import dequantize_weight
    from laaq.search import Calibration, candidate_settings, search_plan
    from laaq.search.baselines import output_error_costs
    from laaq.search.metric import forward
    from laaq.search.solver import Budget

    torch.manual_seed(0)
    g = model_graph(build_model("resnet20", (3, 8, 8), 10).eval(), (3, 8, 8))
    x = torch.rand(6, 3, 8, 8)
    xa = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    st = candidate_settings((2, 8), (1.0,))
    costs = output_error_costs(g, x, xa, st)
    node = g.weighted()[3]  # a layer inside a residual block: the tail-only pass must equal the full one
    both = torch.cat([x, xa])
    w = {node.name: torch.as_tensor(dequantize_weight(node.weight, st[0]))}
    with torch.no_grad():
        want = float(((forward(g, both, weights=w) - forward(g, both)) ** 2).sum(1).mean())
    assert abs(costs[node.name][st[0]] - want) <= 1e-6 * max(1.0, want)
    assert all(row[st[0]] > row[st[1]] >= 0 for row in costs.values())  # 2 bits moves the logits more than 8
    calib = Calibration(x, torch.zeros(6, dtype=torch.long), xa)
    plan = search_plan("output-error", g, calib, Budget(avg_bits=5.0))
    table = json.loads(plan.meta["costs"])
    assert set(table) == {n.name for n in g.weighted()} and "2/1" in table[node.name]


def test_tail_cache_gives_the_full_pass_loss() -> None:
    """Refinement's cached passes (only the layers after the first changed one) equal full passes exactly."""
    import torch

    from laaq.importer import model_graph
    from laaq.models import build_model
    from laaq.quant.plan import LayerSetting
    from laaq.search.metric import TailCache, adversarial_loss

    torch.manual_seed(0)
    g = model_graph(build_model("resnet20", (3, 8, 8), 10).eval(), (3, 8, 8))
    x, y = torch.rand(5, 3, 8, 8), torch.randint(0, 10, (5,))
    names = [n.name for n in g.weighted()]
    base = {n: LayerSetting(8, 1.0) for n in names}
    cache = TailCache()
    probes = [base, {**base, names[-1]: LayerSetting(2, 1.0)}, {**base, names[5]: LayerSetting(3, 0.8)}, base,
              {**base, names[0]: LayerSetting(4, 1.0), names[9]: LayerSetting(2, 1.0)}]
    for alloc in probes:
        assert adversarial_loss(g, alloc, x, y, cache=cache) == adversarial_loss(g, alloc, x, y)


def test_norm_product_is_a_search_method_on_chains_and_refuses_residual_graphs(digits, tiny_model) -> None:
    """LAAQ's knapsack on the textbook bound (exact operator norms): a plan within budget on a layer chain,
    its cost table stored; a residual graph is one ValueError."""
    import json

    import torch

    from laaq.importer import model_graph
    from laaq.models import ResNet20
    from laaq.search import Budget, Calibration, search_plan

    g = tiny_model.to_graph()
    x = digits.x_train[:8]
    calib = Calibration(x, digits.y_train[:8], (x + 0.05 * torch.randn_like(x)).clamp(0, 1))
    plan = search_plan("norm-product", g, calib, Budget(avg_bits=4.0))
    assert plan.meta["method"] == "norm-product" and json.loads(plan.meta["costs"])
    assert float(plan.meta["spend_avg_bits"]) <= 4.0 + 1e-9
    r = model_graph(ResNet20().eval(), (3, 32, 32))
    xr = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="layer chains only"):
        search_plan("norm-product", r, Calibration(xr, torch.zeros(2, dtype=torch.long), xr), Budget(avg_bits=4.0))
