"""Baseline cost tables and plans, all solved by the same knapsack as LAAQ at the same budget.

* ``uniform``     — the same bits everywhere (the largest candidate width the budget allows), max-abs scales;
* ``uniform-clip``— the same widths, each layer's clip the MSE-optimal one of the search's grid: the
  clip search every other method gets, so that a win over uniform is not a clipping win;
* ``mse``         — quantization error only: cost = ‖W − Q(W)‖²_F (no data, no adversary);
* ``sensitivity`` — one layer at a time on adversarial inputs: the increase of the adversarial
  cross-entropy when only that layer is quantized with that setting;
* ``hessian``     — HAWQ-V3: Hutchinson estimate of each layer's Hessian trace of the clean loss,
  cost = |Tr(H_l)|/n_l · ‖W − Q(W)‖²_F;
* ``output-error``— the measured mean squared logit change of quantizing one layer at a setting, on clean and
  adversarial calibration inputs: LAAQ's quantity without its Lipschitz factor;
* ``random``      — random feasible plans that spend the budget (a distribution, not one draw).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from laaq.graph import Graph
from laaq.quant.plan import LayerSetting
from laaq.quant.quantizers import dequantize_weight
from laaq.search.metric import forward
from laaq.search.solver import Budget, BudgetError, LayerStats, feasible

CostTable = dict[str, dict[LayerSetting, float]]


def uniform_alloc(graph: Graph, stats: Mapping[str, LayerStats], budget: Budget,
                  bits_choices: tuple[int, ...]) -> dict[str, LayerSetting]:
    """The widest uniform allocation (clip 1, max-abs scales) that fits the budget."""
    names = [n.name for n in graph.weighted()]
    for b in sorted(bits_choices, reverse=True):
        alloc = {n: LayerSetting(b, 1.0) for n in names}
        if feasible(alloc, stats, budget):
            return alloc
    raise BudgetError(f"no uniform allocation over bits {bits_choices} fits budget {budget.describe()}")


def uniform_clip_alloc(graph: Graph, stats: Mapping[str, LayerStats], budget: Budget,
                       settings: list[LayerSetting]) -> dict[str, LayerSetting]:
    """:func:`uniform_alloc`'s widths with each layer's MSE-optimal clip from ``settings``' grid."""
    widths = uniform_alloc(graph, stats, budget, tuple(sorted({s.bits for s in settings})))
    clips = tuple(sorted({s.clip for s in settings}, reverse=True))
    return {n.name: mse_clip(n.weight, widths[n.name].bits, clips) for n in graph.weighted()}


def mse_clip(weight: np.ndarray, bits: int, clips: tuple[float, ...]) -> LayerSetting:
    """The setting at ``bits`` whose clip (from ``clips``) minimises the squared weight error."""
    row = mse_costs_for(weight, [LayerSetting(bits, c) for c in clips])
    return min(row, key=row.__getitem__)


def mse_costs_for(weight: np.ndarray, settings: list[LayerSetting]) -> dict[LayerSetting, float]:
    """Squared weight error of one layer per setting."""
    return {s: float(((weight - dequantize_weight(weight, s)).astype(np.float64) ** 2).sum()) for s in settings}


def mse_costs(graph: Graph, settings: list[LayerSetting]) -> CostTable:
    """Squared weight error per layer and setting: what a data-free quantizer minimises."""
    return {n.name: mse_costs_for(n.weight, settings) for n in graph.weighted()}


def sensitivity_costs(graph: Graph, x_adv: torch.Tensor, y: torch.Tensor, settings: list[LayerSetting]) -> CostTable:
    """Adversarial loss increase when one layer alone is quantized (one forward pass per entry)."""
    with torch.no_grad():
        base = float(F.cross_entropy(forward(graph, x_adv), y))  # type: ignore[arg-type]
        out: CostTable = {}
        for n in graph.weighted():
            row = {}
            for s in settings:
                w = {n.name: torch.as_tensor(dequantize_weight(n.weight, s))}
                row[s] = float(F.cross_entropy(forward(graph, x_adv, weights=w), y)) - base  # type: ignore[arg-type]
            out[n.name] = row
    return out


def output_error_costs(graph: Graph, x_clean: torch.Tensor, x_adv: torch.Tensor,
                       settings: list[LayerSetting]) -> CostTable:
    """``output-error``: the measured mean squared logit change when one layer alone is quantized with a
    setting, over the clean and the adversarial calibration inputs — LAAQ's quantity without its Lipschitz
    factor (no tail gain, no first-order model: the real change of the real logits), on the same knapsack.

    Why: LAAQ's default cost multiplies each layer's error by a tail gain that over-bounds the exact logit
    error by 1× to ~1,000×; this baseline tells apart "the Lipschitz factor helps" from "any data-aware
    output error helps". One forward pass per (layer, setting) through the layer's tail only."""
    from laaq.search.metric import prefix_env

    x = torch.cat([x_clean, x_adv])
    out: CostTable = {}
    with torch.no_grad():
        env = forward(graph, x, keep=True)
        assert isinstance(env, dict)
        ref = env[graph.output]
        for n in graph.weighted():
            prefix = prefix_env(graph, env, n.name)
            out[n.name] = {s: float(((forward(graph, x, weights={n.name: torch.as_tensor(
                dequantize_weight(n.weight, s))}, prefix=prefix) - ref) ** 2).sum(1).mean())  # type: ignore[operator]
                for s in settings}
    return out


def hessian_traces(graph: Graph, x: torch.Tensor, y: torch.Tensor, max_iter: int = 100, tol: float = 1e-3,
                   seed: int = 0) -> dict[str, float]:
    """Per-layer Hutchinson trace of the loss Hessian w.r.t. that layer's weights (PyHessian-style).

    Each iteration draws a Rademacher vector for all layers at once and does one Hessian-vector
    product by double back-propagation; it stops when the running mean of the total trace changes
    by less than ``tol`` (relative), as in HAWQ-V3's PyHessian, or after ``max_iter`` draws.
    """
    gen = torch.Generator().manual_seed(seed)
    names = [n.name for n in graph.weighted()]
    params = {n.name: torch.as_tensor(n.weight).clone().requires_grad_(True) for n in graph.weighted()}
    loss = F.cross_entropy(forward(graph, x, weights=params), y)  # type: ignore[arg-type]
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
    sums = dict.fromkeys(names, 0.0)
    prev = None
    for it in range(1, max_iter + 1):
        vs = [(torch.randint(0, 2, g.shape, generator=gen) * 2 - 1).to(g.dtype) for g in grads]
        hv = torch.autograd.grad(grads, [params[n] for n in names], grad_outputs=vs, retain_graph=True)
        for n, h, v in zip(names, hv, vs, strict=True):
            sums[n] += float((h * v).sum())
        total = sum(sums.values()) / it
        if prev is not None and abs(total - prev) / max(abs(prev), 1e-12) < tol:
            break
        prev = total
    return {n: sums[n] / it for n in names}


def hessian_costs(graph: Graph, x: torch.Tensor, y: torch.Tensor, settings: list[LayerSetting],
                  max_iter: int = 100, seed: int = 0) -> CostTable:
    """HAWQ-V3 sensitivity: average Hessian trace × squared weight error, with the trace's magnitude.

    HAWQ-V3 (Yao et al. 2021, eq. 4) weighs each layer by its average Hessian trace, a curvature it takes to be
    positive (the loss near a minimum); a Hutchinson estimate on a non-convex network can still come out
    negative (noise, or negative curvature). Used as is, a negative trace turns the layer's cost into a
    *reward* for fewer bits (measured: conv1 of VGG8 seed 1 at 2 bits, a 6–8 % collapse). We take |trace| —
    the size of the loss's second-order response either way — rather than clamping to 0, which would make
    every width of that layer free."""
    traces = {k: abs(v) for k, v in hessian_traces(graph, x, y, max_iter=max_iter, seed=seed).items()}
    mse = mse_costs(graph, settings)
    return {n.name: {s: traces[n.name] / n.weight.size * mse[n.name][s] for s in settings} for n in graph.weighted()}


def random_allocs(graph: Graph, stats: Mapping[str, LayerStats], budget: Budget, settings: list[LayerSetting],
                  count: int, seed: int = 0) -> list[dict[str, LayerSetting]]:
    """``count`` random feasible plans that spend the budget: start from the cheapest settings with
    random clips, then raise randomly chosen layers one bit level at a time while they fit."""
    rng = np.random.default_rng(seed)
    names = [n.name for n in graph.weighted()]
    levels = sorted({s.bits for s in settings})
    clips = sorted({s.clip for s in settings})
    out = []
    for _ in range(count):
        alloc = {n: LayerSetting(levels[0], float(rng.choice(clips))) for n in names}
        if not feasible(alloc, stats, budget):
            raise BudgetError(f"even {levels[0]}-bit weights exceed budget {budget.describe()}")
        open_layers = list(names)
        while open_layers:
            n = open_layers[int(rng.integers(len(open_layers)))]
            i = levels.index(alloc[n].bits)
            if i + 1 < len(levels):
                cand = {**alloc, n: LayerSetting(levels[i + 1], alloc[n].clip)}
                if feasible(cand, stats, budget):
                    alloc = cand
                    continue
            open_layers.remove(n)
        out.append(alloc)
    return out
