"""Mixed-precision plan search: LAAQ and its baselines behind one entry point, :func:`search_plan`.

Typical use (what ``laaq-bench search`` and ``bench`` do)::

    calib = make_calibration(graph, x_calib, y_calib, PGDConfig(eps=0.3, step_size=0.025, steps=10))
    plan = search_plan("laaq", graph, calib, Budget(avg_bits=4.0))
    Path("plan.json").write_text(plan.to_json())

Every method builds a cost table ``cost[layer][(bits, clip)]`` and is solved by the same exact
knapsack under the same :class:`Budget`; the plan's ``meta`` records the method, the budget, what
the plan spends and the search time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from laaq.attacks import PGDConfig, pgd_in_batches, pgd_step
from laaq.graph import Graph
from laaq.quant.plan import QuantPlan
from laaq.search.baselines import (
    hessian_costs,
    mse_costs,
    output_error_costs,
    random_allocs,
    sensitivity_costs,
    uniform_alloc,
    uniform_clip_alloc,
)
from laaq.search.groups import GroupView, group_view
from laaq.search.metric import forward, laaq_costs, norm_product_costs, search_images
from laaq.search.refinement import best_random_alloc, refinement_metric, validation_accuracy
from laaq.search.solver import (
    CANDIDATE_BITS,
    CLIP_GRID,
    Budget,
    BudgetError,
    CostConstraint,
    candidate_settings,
    latency_budget,
    layer_stats,
    make_plan,
    refine,
    solve,
    spend,
)

__all__ = ["METHODS", "METHOD_HANDLERS", "Budget", "BudgetError", "Calibration", "CalibrationRecipe",
           "CostConstraint", "SearchConfig", "latency_budget", "layer_stats", "make_calibration", "random_plans",
           "register_method", "search_plan", "spend"]


@dataclass(frozen=True)
class SearchConfig:
    """How a search runs; the defaults are the ones the experiment reports.

    ``mode``/``attack_weight``: the LAAQ metric variant (see :mod:`laaq.search.metric`). The
    log-Lipschitz attack term is off by default: on MNIST/SmallCNN-AT (seed 0) it cost 8× the search
    time (exact norms of 36 quantized variants per layer) and 3 PGD points (see docs/method.md);
    ``refine``: run the layer-wise refinement with the exact adversarial loss after the solver; its result is
    kept only where it wins on validation images (:attr:`Calibration.x_val`, used by nothing else: robust accuracy
    under the calibration's PGD against each plan's bit-exact twin), else the knapsack's plan stands — the
    experiment found refinement never helped on the test images (−1.8 … +1.0 points) at ~3× the search time;
    ``refine_on``: what it scores moves on — ``"holdout"`` (default): adversarial examples of *held-out*
    images (:attr:`Calibration.x_hold`, never used by the cost tables), re-crafted against the current
    plan's bit-exact twin at the start of every sweep (adaptive); ``"calibration"``: the fixed
    float-model adversarial calibration set the cost tables used (the old behaviour, which overfitted:
    on the ``make bench`` model it traded 2 PGD points for 0.4 % less calibration loss).
    ``random_count``: how many random plans "random-best" draws (the experiment sets it to LAAQ's number
    of exact-loss evaluations: equal compute, and deterministic, unlike a time limit).
    ``group_size``: 0 — one width per layer; n > 0 — every plain layer with at least 2n output channels
    gets one width and clip per group of n channels (:mod:`laaq.search.groups`), for *any* method.
    """

    bits: tuple[int, ...] = CANDIDATE_BITS
    clips: tuple[float, ...] = CLIP_GRID
    mode: str = "lipschitz"
    attack_weight: float = 0.0
    refine: bool = True
    refine_sweeps: int = 2
    refine_max_evals: int = 600
    refine_on: str = "holdout"
    random_count: int = 8
    hessian_max_iter: int = 100
    seed: int = 0
    group_size: int = 0


@dataclass(frozen=True)
class Calibration:
    """Calibration inputs (float in [0, 1]) and labels, plus adversarial versions crafted on the float model.

    ``adv_time_s`` is the time it took to craft ``x_adv``; methods that use the adversarial inputs
    add it to their reported search time.
    """

    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor
    pgd: PGDConfig = field(default_factory=PGDConfig)
    adv_time_s: float = 0.0
    x_hold: torch.Tensor | None = None  # held-out images (disjoint from ``x``): what refinement scores on
    y_hold: torch.Tensor | None = None
    x_val: torch.Tensor | None = None  # further held-out images (disjoint from both): what decides if refinement stays
    y_val: torch.Tensor | None = None

    @property
    def all_x(self) -> torch.Tensor:
        """Clean and adversarial inputs together: what activation scales are calibrated on."""
        return torch.cat([self.x, self.x_adv])


@dataclass(frozen=True)
class CalibrationRecipe:
    """The one calibration recipe of ``bench``, ``search``, ``compile`` and ``experiment``.

    Why one: activation scales, the search's adversarial examples and hence every plan depend on it;
    two recipes (first vs random images, clean-only vs clean + adversarial scales) made the bench and
    the experiment measure different models under the same name. Images are a seeded random sample of
    the training split; adversarial versions are PGD (``attack_steps``, step 2.5·ε/steps) on the float
    model; activation scales are calibrated on clean + adversarial inputs (:attr:`Calibration.all_x`).
    """

    samples: int = 256
    attack_steps: int = 10
    holdout: int = 256  # further training images, disjoint from the calibration ones, for refinement
    validation: int = 128  # and further ones, disjoint from both: refinement's result is kept only if it wins there

    def make(self, graph: Graph, x_train: torch.Tensor, y_train: torch.Tensor, eps: float, seed: int,
             model: torch.nn.Module | None = None) -> Calibration:
        if self.samples < 1:
            raise ValueError(f"calibration needs at least one image, got samples={self.samples}")
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(x_train), size=min(self.samples, len(x_train)), replace=False)
        rest = np.setdiff1d(np.arange(len(x_train)), idx)
        hold = rng.choice(rest, size=min(self.holdout, len(rest)), replace=False) if len(rest) else None
        idx = torch.as_tensor(idx)
        cfg = PGDConfig(eps=eps, step_size=pgd_step(eps, self.attack_steps), steps=self.attack_steps, restarts=1,
                        seed=seed)
        calib = make_calibration(graph, x_train[idx], y_train[idx], cfg, model=model)
        if hold is None or not self.holdout:
            return calib
        calib = replace(calib, x_hold=x_train[torch.as_tensor(hold)], y_hold=y_train[torch.as_tensor(hold)])
        rest = np.setdiff1d(rest, hold)  # drawn after the others: adding it changed neither sample
        if not self.validation or not len(rest):
            return calib
        val = torch.as_tensor(rng.choice(rest, size=min(self.validation, len(rest)), replace=False))
        return replace(calib, x_val=x_train[val], y_val=y_train[val])


def make_calibration(graph: Graph, x: torch.Tensor, y: torch.Tensor, pgd_cfg: PGDConfig,
                     model: torch.nn.Module | None = None) -> Calibration:
    """Craft adversarial calibration inputs with PGD on the float network (``model`` if given, else the graph)."""
    t0 = time.perf_counter()
    predict = model.eval() if model is not None else (lambda z: forward(graph, z))
    x_adv = pgd_in_batches(predict, x, y, pgd_cfg)  # type: ignore[arg-type] - one batch where it fits memory
    return Calibration(x, y, x_adv, pgd_cfg, time.perf_counter() - t0)


@dataclass
class _Search:
    """What a method handler gets: the graph, calibration data, budget, config, layer stats, candidates."""

    graph: Graph
    calib: Calibration
    budget: Budget
    cfg: SearchConfig
    stats: dict
    settings: list
    extra_time: float = 0.0  # search time spent outside the handler that counts (e.g. crafting adversarial data)
    meta: dict = field(default_factory=dict)
    view: GroupView | None = None  # per-channel-group search: ``graph`` is view.graph, allocations are per unit
    deploy_graph: Graph | None = None  # the real graph (what plans are for)

    def solve(self, costs: dict) -> dict:
        """The knapsack over ``costs``; the table itself goes into the plan's meta (``costs``, JSON: layer ->
        "bits/clip" -> cost), so a unit's plan says what its method saw and a defect can be checked later."""
        self.meta["costs"] = json.dumps({n: {f"{st.bits}/{st.clip:g}": c for st, c in row.items()}
                                         for n, row in costs.items()}, sort_keys=True)
        return solve(costs, self.stats, self.budget)

    def deployed(self) -> tuple[Graph, Callable[[dict], dict]]:
        """(the real graph, unit allocation → per-layer settings): what a twin of a plan is built from."""
        if self.view is None:
            return self.graph, dict
        assert self.deploy_graph is not None
        return self.deploy_graph, self.view.to_layers


Handler = Callable[[_Search], dict]  # → allocation {layer: (bits, clip)}
METHOD_HANDLERS: dict[str, Handler] = {}


def register_method(name: str) -> Callable[[Handler], Handler]:
    """Register a search method by name (as torchao binds a config to its handler): no if/elif on names."""
    def deco(fn: Handler) -> Handler:
        METHOD_HANDLERS[name] = fn
        return fn

    return deco


@register_method("laaq")
def _laaq(s: _Search) -> dict:
    costs = laaq_costs(s.graph, s.calib.x, s.calib.x_adv, s.settings, s.cfg.mode, s.cfg.attack_weight, s.cfg.seed)
    s.extra_time = s.calib.adv_time_s
    s.meta.update(mode=s.cfg.mode, attack_weight=s.cfg.attack_weight,
                  search_images=search_images(s.graph, len(s.calib.x_adv)))
    alloc = s.solve(costs)
    if s.cfg.refine:
        before = alloc
        metric, on_sweep = refinement_metric(s.graph, s.calib, s.cfg.refine_on, *s.deployed(), s.cfg.refine_max_evals)
        alloc, evals = refine(alloc, metric, s.settings, s.stats, s.budget, s.cfg.refine_sweeps, s.cfg.refine_max_evals,
                              on_sweep=on_sweep)
        s.meta.update(refine_evals=evals, refined_layers=sum(before[n] != alloc[n] for n in alloc),
                      refine_on=s.cfg.refine_on if s.calib.x_hold is not None else "calibration")
        alloc = validation_gate(s, before, alloc)
    return alloc


def validation_gate(s: _Search, knapsack: dict, refined: dict) -> dict:
    """Refinement's plan if it is more robust than the knapsack's on the validation images, else the knapsack's
    (ties too: the simpler plan). Without validation images (or when refinement changed nothing) nothing is
    compared and the refined plan stands, as before; the plan's meta says which happened."""
    if refined == knapsack or s.calib.x_val is None:
        s.meta.update(refine_kept="unchanged" if refined == knapsack else "no validation images")
        return refined
    graph, to_layers = s.deployed()
    before, after = (validation_accuracy(graph, to_layers(a), s.calib) for a in (knapsack, refined))
    kept = after > before
    s.meta.update(refine_val_knapsack=round(before, 4), refine_val_refined=round(after, 4),
                  refine_kept="refined" if kept else "knapsack", refine_val_images=int(len(s.calib.x_val)))
    return refined if kept else knapsack


@register_method("uniform")
def _uniform(s: _Search) -> dict:
    return uniform_alloc(s.graph, s.stats, s.budget, s.cfg.bits)


@register_method("uniform-clip")
def _uniform_clip(s: _Search) -> dict:
    return uniform_clip_alloc(s.graph, s.stats, s.budget, s.settings)


@register_method("mse")
def _mse(s: _Search) -> dict:
    return s.solve(mse_costs(s.graph, s.settings))


@register_method("sensitivity")
def _sensitivity(s: _Search) -> dict:
    s.extra_time = s.calib.adv_time_s
    return s.solve(sensitivity_costs(s.graph, s.calib.x_adv, s.calib.y, s.settings))


@register_method("output-error")
def _output_error(s: _Search) -> dict:
    s.extra_time = s.calib.adv_time_s
    n = search_images(s.graph, len(s.calib.x_adv))  # the LAAQ metric's images: the same data, without the factor
    s.meta.update(search_images=n)
    return s.solve(output_error_costs(s.graph, s.calib.x[:n], s.calib.x_adv[:n], s.settings))


@register_method("norm-product")
def _norm_product(s: _Search) -> dict:
    """LAAQ's knapsack on the textbook bound: exact operator norms of the tail instead of the measured tail gain
    (layer chains only; a residual graph is refused with a one-line ValueError)."""
    s.extra_time = s.calib.adv_time_s
    n = search_images(s.graph, len(s.calib.x_adv))
    s.meta.update(search_images=n)
    return s.solve(norm_product_costs(s.graph, s.calib.x_adv[:n], s.settings))


@register_method("hessian")
def _hessian(s: _Search) -> dict:
    costs = hessian_costs(s.graph, s.calib.x, s.calib.y, s.settings, max_iter=s.cfg.hessian_max_iter, seed=s.cfg.seed)
    return s.solve(costs)


@register_method("random")
def _random(s: _Search) -> dict:
    s.meta.update(draw=0)
    return random_allocs(s.graph, s.stats, s.budget, s.settings, 1, s.cfg.seed)[0]


@register_method("random-best")
def _random_best(s: _Search) -> dict:
    """Best of ``random_count`` random plans by the adversarial calibration loss (the data LAAQ's table sees)."""
    s.extra_time = s.calib.adv_time_s
    s.meta.update(draws=s.cfg.random_count)
    return best_random_alloc(s.graph, s.stats, s.budget, s.settings, s.calib, s.cfg.random_count, s.cfg.seed)


METHODS = tuple(METHOD_HANDLERS)


def search_plan(method: str, graph: Graph, calib: Calibration, budget: Budget,
                config: SearchConfig | None = None) -> QuantPlan:
    """A quantization plan for ``graph`` within ``budget`` by ``method`` (one of :data:`METHODS`)."""
    cfg = config or SearchConfig()
    if method not in METHOD_HANDLERS:
        raise ValueError(f"unknown search method {method!r}; choose one of {METHODS}")
    t0 = time.perf_counter()
    view = None
    if cfg.group_size:
        if budget.constraints or budget.model_bytes is not None:
            raise ValueError("model-bytes and per-layer cost budgets (e.g. a latency table) count a layer at its "
                             "widest group, which the per-group knapsack cannot see: use group_size 0 for them")
        view = group_view(graph, cfg.group_size)
    g = view.graph if view is not None else graph
    state = _Search(g, calib, budget, cfg, layer_stats(g), candidate_settings(cfg.bits, cfg.clips), view=view,
                    deploy_graph=graph)
    alloc = METHOD_HANDLERS[method](state)
    if view is not None:
        alloc = view.to_layers(alloc)
        state.meta.update(group_size=cfg.group_size, grouped_layers=" ".join(view.split_layers))
    elapsed = time.perf_counter() - t0 + state.extra_time
    return make_plan(alloc, layer_stats(graph), budget, method, elapsed, seed=cfg.seed, **state.meta)


def random_plans(graph: Graph, budget: Budget, count: int, config: SearchConfig | None = None) -> list[QuantPlan]:
    """``count`` random feasible plans that spend the budget (seeded by ``config.seed``)."""
    cfg = config or SearchConfig()
    stats = layer_stats(graph)
    t0 = time.perf_counter()
    allocs = random_allocs(graph, stats, budget, candidate_settings(cfg.bits, cfg.clips), count, cfg.seed)
    per = (time.perf_counter() - t0) / max(count, 1)
    return [make_plan(a, stats, budget, "random", per, seed=cfg.seed, draw=i) for i, a in enumerate(allocs)]
