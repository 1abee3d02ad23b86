"""Budgets and the exact multiple-choice knapsack behind every search method.

Every method (LAAQ and the baselines alike) reduces to a table ``cost[layer][setting]`` and hands it
to the same solver, so the methods differ *only* in what they believe a setting costs in accuracy —
never in how well the allocation is optimised. The solver is ``scipy.optimize.milp`` (HiGHS) over
binary variables ``x[l, s]`` with one setting per layer and one linear row per budget:

* ``avg_bits``    — parameter-weighted average weight bits (the usual "4-bit model");
* ``model_bytes`` — weight storage, Σ bits·params / 8;
* ``bops``        — bit operations per sample, Σ MACs · w_bits · a_bits;
* ``constraints`` — any per-layer cost table ``table[layer][bits]`` with a limit, e.g. a latency
  table measured on one target (see :func:`latency_budget`), so each board gets its own plan.

:func:`refine` then improves a solution layer by layer with an exact (non-separable) metric,
accepting only moves that stay within the budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from laaq.graph import Graph
from laaq.quant.plan import LayerSetting, QuantPlan

CANDIDATE_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)  # 7: exact on AVX2 vpmaddubsw, nearly free
CLIP_GRID: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)

CostTable = dict[str, dict[LayerSetting, float]]


class BudgetError(ValueError):
    """No plan over the candidate settings satisfies the budget."""


def candidate_settings(bits: tuple[int, ...] = CANDIDATE_BITS,
                       clips: tuple[float, ...] = CLIP_GRID) -> list[LayerSetting]:
    """All (bits, clip) pairs a search may choose from, in a stable order."""
    return [LayerSetting(b, c) for b in bits for c in clips]


@dataclass(frozen=True)
class CostConstraint:
    """A generic per-layer resource: ``Σ_l table[l][bits_l] ≤ limit`` (e.g. milliseconds on one board)."""

    name: str
    table: Mapping[str, Mapping[int, float]]
    limit: float

    def cost(self, layer: str, bits: int) -> float:
        try:
            return float(self.table[layer][bits])
        except KeyError:
            raise BudgetError(f"constraint {self.name!r} has no entry for layer {layer!r} at {bits} bits") from None


@dataclass(frozen=True)
class Budget:
    """Resource limits a plan must respect; any combination of fields may be set (at least one).

    ``act_bits`` only enters the BOPs count (activations are always 8-bit in this pipeline).
    """

    avg_bits: float | None = None
    model_bytes: float | None = None
    bops: float | None = None
    constraints: tuple[CostConstraint, ...] = field(default_factory=tuple)
    act_bits: int = 8

    def __post_init__(self) -> None:
        if self.avg_bits is None and self.model_bytes is None and self.bops is None and not self.constraints:
            raise ValueError("a Budget needs at least one limit (avg_bits, model_bytes, bops or a constraint)")

    def describe(self) -> str:
        parts = []
        if self.avg_bits is not None:
            parts.append(f"avg_bits<={self.avg_bits:g}")
        if self.model_bytes is not None:
            parts.append(f"model_bytes<={self.model_bytes:g}")
        if self.bops is not None:
            parts.append(f"bops<={self.bops:g}")
        parts += [f"{c.name}<={c.limit:g}" for c in self.constraints]
        return ",".join(parts)


def latency_budget(table: Mapping[str, Mapping[int, float]], ms: float, **limits: float) -> Budget:
    """A budget on summed per-layer latency, from a table ``table[layer][bits] -> ms`` measured on a target."""
    return Budget(constraints=(CostConstraint("latency_ms", table, ms),), **limits)


@dataclass(frozen=True)
class LayerStats:
    params: int
    macs: int


def layer_stats(graph: Graph) -> dict[str, LayerStats]:
    """Weight count and per-sample MACs of every weighted layer (what the budgets are made of)."""
    return {n.name: LayerStats(int(n.weight.size), graph.macs(n)) for n in graph.weighted()}


Row = tuple[str, Callable[[str, LayerSetting], float], float]


def _rows(stats: Mapping[str, LayerStats], budget: Budget) -> list[Row]:
    """(name, per-layer resource function, limit) for every limit in the budget."""
    rows: list[Row] = []
    total = sum(s.params for s in stats.values())
    if budget.avg_bits is not None:
        rows.append(("avg_bits", lambda n, s: stats[n].params * s.mean_bits / total, budget.avg_bits))
    if budget.model_bytes is not None:
        # storage packs a layer at its widest group's width: bytes count s.bits, not s.mean_bits
        rows.append(("model_bytes", lambda n, s: stats[n].params * s.bits / 8.0, budget.model_bytes))
    if budget.bops is not None:
        rows.append(("bops", lambda n, s: float(stats[n].macs * s.mean_bits * budget.act_bits), budget.bops))
    for c in budget.constraints:
        rows.append((c.name, lambda n, s, c=c: c.cost(n, s.bits), c.limit))
    return rows


def spend(layers: Mapping[str, LayerSetting], stats: Mapping[str, LayerStats], budget: Budget) -> dict[str, float]:
    """What an allocation spends of each resource the budget limits."""
    return {name: sum(f(n, s) for n, s in layers.items()) for name, f, _ in _rows(stats, budget)}


def feasible(layers: Mapping[str, LayerSetting], stats: Mapping[str, LayerStats], budget: Budget) -> bool:
    used = spend(layers, stats, budget)
    return all(used[name] <= limit * (1 + 1e-9) + 1e-12 for name, _, limit in _rows(stats, budget))


def monotone_in_bits(costs: CostTable) -> CostTable:
    """Project a cost table onto "fewer bits never help" (per layer and clip): each width costs at least what
    any wider width of the same clip costs — the upper monotone envelope, ``cost[b] = max_{b' >= b} cost[b']``.

    Measured costs are noisy (a loss on a few hundred calibration images can drop by chance when a layer loses a
    bit); left alone, the solver exploits that noise. The projection used to be the running *minimum* from the
    narrow end, which carried a noisy or negative narrow entry up to every wider width, so the narrow width tied
    with 8 bits and cost nothing (a negative HAWQ trace made 2 bits free for conv1; Sensitivity's seed-3
    collapse). The envelope from the wide end cannot make a narrow width cheaper than a wider one. Every method
    gets the same projection, so comparisons stay at equal budget.
    """
    out: CostTable = {}
    for n, row in costs.items():
        new = dict(row)
        for clip in {s.clip for s in row}:
            run = -math.inf
            for s in sorted((s for s in row if s.clip == clip), key=lambda s: -s.bits):
                run = max(run, row[s])
                new[s] = run
        out[n] = new
    return out


def solve(costs: CostTable, stats: Mapping[str, LayerStats], budget: Budget, monotone: bool = True,
          prefer_spending: bool = True) -> dict[str, LayerSetting]:
    """Exact minimum of Σ_l cost[l][s_l] subject to the budget (HiGHS branch and bound, zero gap).

    Costs are rescaled to a unit range before solving so that HiGHS's absolute tolerances mean the
    same thing whatever the units of the metric. ``monotone`` applies :func:`monotone_in_bits`;
    ``prefer_spending`` breaks exact ties towards more weight bits (a 1e-7 nudge, far below any
    real cost difference), so methods are compared at the budget rather than below it.
    """
    layers = list(costs)
    if monotone:
        costs = monotone_in_bits(costs)
    choices = [(n, s) for n in layers for s in costs[n]]
    if not choices:
        raise ValueError("empty cost table")
    c = np.array([costs[n][s] for n, s in choices], dtype=np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError("cost table holds NaN or infinite entries")
    c = (c - c.min()) / max(float(np.ptp(c)), 1e-300)
    if prefer_spending:
        total = sum(stats[n].params for n in layers)
        c -= 1e-7 * np.array([stats[n].params * s.bits / total for n, s in choices])
    a_eq = np.zeros((len(layers), len(choices)))
    for j, (n, _) in enumerate(choices):
        a_eq[layers.index(n), j] = 1.0
    cons = [LinearConstraint(a_eq, 1.0, 1.0)]
    for _, f, limit in _rows(stats, budget):
        row = np.array([f(n, s) for n, s in choices], dtype=np.float64)
        cons.append(LinearConstraint(row[None, :], -np.inf, limit * (1 + 1e-9) + 1e-12))
    res = milp(c, constraints=cons, integrality=np.ones(len(choices)), bounds=Bounds(0, 1),
               options={"mip_rel_gap": 0.0, "presolve": True})
    if res.status != 0 or res.x is None:
        cheapest = {name: sum(min(f(n, s) for s in costs[n]) for n in layers) for name, f, _ in _rows(stats, budget)}
        raise BudgetError(f"no plan satisfies budget {budget.describe()} ({res.message}); the cheapest "
                          f"candidate settings need {cheapest}")
    out: dict[str, LayerSetting] = {}
    for j, (n, s) in enumerate(choices):
        if res.x[j] > 0.5:
            out[n] = s
    if set(out) != set(layers):  # pragma: no cover - guarded by the equality rows
        raise RuntimeError("solver returned an incomplete assignment")
    return out


def make_plan(layers: Mapping[str, LayerSetting], stats: Mapping[str, LayerStats], budget: Budget, method: str,
              search_time_s: float, **meta: object) -> QuantPlan:
    """A QuantPlan whose meta records the method, the budget, what it spent and how long it took."""
    used = spend(layers, stats, budget)
    total = sum(s.params for s in stats.values())
    info = {"method": method, "budget": budget.describe(), "search_time_s": f"{search_time_s:.3f}",
            "avg_bits": f"{sum(stats[n].params * s.mean_bits for n, s in layers.items()) / total:.4f}",
            **{f"spend_{k}": f"{v:.6g}" for k, v in used.items()}, **{k: str(v) for k, v in meta.items()}}
    ordered = {n: layers[n] for n in stats}
    return QuantPlan(ordered, name=method, meta=info)


def refine(layers: Mapping[str, LayerSetting], evaluate: Callable[[dict[str, LayerSetting]], float],
           settings: list[LayerSetting], stats: Mapping[str, LayerStats], budget: Budget, max_sweeps: int = 2,
           max_evals: int = 2000, time_limit_s: float = math.inf,
           on_sweep: Callable[[dict[str, LayerSetting]], None] | None = None) -> tuple[dict[str, LayerSetting], int]:
    """Layer-wise best-improvement local search with an exact metric, within the budget.

    Moves: change one layer's clip, or raise its bits (same clip) if that fits; or move one bit
    level from one layer to another (keeping their clips). Moves that only *remove* bits are not
    tried: on a few hundred calibration images they win by noise and leave budget unspent. The
    separable solver cannot see interactions between layers; this step measures them. ``on_sweep``
    is called with the current allocation before each sweep (e.g. to re-craft adaptive examples); the
    current allocation is then re-scored, so moves are always compared on the same examples. Returns
    (allocation, number of evaluations).
    """
    cur = dict(layers)
    evals = 0
    t0 = time.perf_counter()
    bits_levels = sorted({s.bits for s in settings})

    def step(b: int, d: int) -> int | None:
        i = bits_levels.index(b) + d if b in bits_levels else -1
        return bits_levels[i] if 0 <= i < len(bits_levels) else None

    for _ in range(max_sweeps):
        if on_sweep is not None or evals == 0:
            if on_sweep is not None:
                on_sweep(cur)
            best = evaluate(cur)
            evals += 1
        cands: list[dict[str, LayerSetting]] = []
        for n in cur:
            for s in settings:
                if s != cur[n] and (s.bits == cur[n].bits or (s.bits > cur[n].bits and s.clip == cur[n].clip)):
                    cands.append({**cur, n: s})
        for a in cur:
            for b in cur:
                up, down = step(cur[a].bits, 1), step(cur[b].bits, -1)
                if a != b and up is not None and down is not None:
                    cands.append({**cur, a: LayerSetting(up, cur[a].clip), b: LayerSetting(down, cur[b].clip)})
        improved = False
        best_cand = None
        for cand in cands:
            if evals >= max_evals or time.perf_counter() - t0 > time_limit_s:
                break
            if not feasible(cand, stats, budget):
                continue
            v = evaluate(cand)
            evals += 1
            if v < best - 1e-12:
                best, best_cand, improved = v, cand, True
        if best_cand is not None:
            cur = best_cand
        if not improved:
            break
    return cur, evals
