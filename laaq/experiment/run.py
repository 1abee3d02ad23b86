"""Runs the experiment grid unit by unit, resumably: model kind × seed × budget × method, plus F1's
uniform widths, each evaluated on its bit-exact twin with the attack ensemble on the same test images.

Order: per seed, per model kind — fp32, then every budget's plans (searched only when some of that
budget's units are unfinished), then F1. A killed run restarts at the first unfinished unit.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats as st
from tqdm import tqdm

from laaq.data import Split, load_dataset
from laaq.graph import Graph
from laaq.importer import model_graph
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import quantize_graph
from laaq.quant.twin import Twin
from laaq.robustness import evaluate
from laaq.search import Calibration, layer_stats, search_plan, spend
from laaq.search.baselines import mse_clip
from laaq.search.solver import Budget
from laaq.stats import wilson
from laaq.train import TrainConfig, train_or_load

from .config import GROUP_SUFFIX, ExperimentConfig, budget_for, latency_range, split_method
from .executor import Executor, LocalExecutor
from .store import Unit, UnitStore, unit_key

MATCH_IMAGES = 200  # training images held out of training and calibration, for the plain model's radius matching


@dataclass
class SeedContext:
    """One trained model of one seed, imported, with its radius, calibration and test images."""

    kind: str
    seed: int
    model: torch.nn.Module
    graph: Graph
    eps: float
    calib: Calibration
    x: torch.Tensor
    y: torch.Tensor

    @property
    def bops_int8(self) -> float:
        return sum(s.macs * 8 * 8 for s in layer_stats(self.graph).values())


def twin_for(graph: Graph, plan: QuantPlan, calib: Calibration) -> Twin:
    """The bit-exact twin of a plan, with activation scales calibrated on clean + adversarial inputs."""
    return Twin(quantize_graph(graph, plan, calib.all_x)).eval()


def _alloc_str(plan: QuantPlan) -> str:
    return " ".join(f"{n}:{s.describe()}" for n, s in plan.layers.items())


def kurtosis(graph: Graph) -> dict[str, float]:
    """Excess kurtosis of each weighted layer's weights (heavy tails: max-abs scales waste levels)."""
    return {n.name: float(st.kurtosis(n.weight.ravel().astype(np.float64))) for n in graph.weighted()}


def held_out(data: Split) -> tuple[Split, torch.Tensor, torch.Tensor]:
    """The split the experiment trains and calibrates on, and the images it matches the plain model's radius
    on: the last :data:`MATCH_IMAGES` training images (at most a fifth of them), held out of both.

    Why: matching on test images (the ones past the evaluated ones, as before) let test data choose a
    protocol parameter; matching on images the models were trained on would compare accuracies inflated by
    training. Held-out training images are neither."""
    m = min(MATCH_IMAGES, len(data.x_train) // 5)
    return (replace(data, x_train=data.x_train[:-m], y_train=data.y_train[:-m]), data.x_train[-m:],
            data.y_train[-m:])


def _train(data: Split, cfg: ExperimentConfig, seed: int, kind: str, progress: bool, cache_dir: Path | None
           ) -> torch.nn.Module:
    tcfg = TrainConfig(arch=cfg.arch, epochs=cfg.train_epochs, lr=cfg.train_lr, adversarial=kind == "pgd-at",
                       pgd=cfg.train_pgd, seed=seed)
    return train_or_load(held_out(data)[0], tcfg, cache_dir=cache_dir, progress=progress)[0].eval()


def matched_eps(data: Split, cfg: ExperimentConfig, seed: int, progress: bool, cache_dir: Path | None,
                store: UnitStore) -> float:
    """The plain model's radius: where its fp32 robust accuracy under the evaluation's own preset comes closest
    to the PGD-AT model's at the evaluation radius, on the held-out training images (:func:`held_out`).
    Stored as a unit (``plain|seed|match|eps``)."""
    key = unit_key("plain", seed, "match", "eps")
    if cfg.plain_eps is not None:
        return cfg.plain_eps
    if store.has(key):
        return float(store.get(key).row["eps"])  # type: ignore[arg-type]
    _, x, y = held_out(data)
    ev = replace(cfg.evaluation, seed=seed, checks=False)
    target = float(evaluate(_train(data, cfg, seed, "pgd-at", progress, cache_dir), x, y, ev).robust.mean())
    plain = _train(data, cfg, seed, "plain", progress, cache_dir)
    curve = {e: float(evaluate(plain, x, y, replace(ev, eps=e)).robust.mean()) for e in cfg.eps_grid}
    eps = min(curve, key=lambda e: abs(curve[e] - target))
    row = {"eps": eps, "target_robust": target, "curve": json.dumps(curve), "images": len(x),
           "on": "held-out training images", "preset": ev.preset.name}
    store.put(Unit(key, row, np.zeros(0, bool), np.zeros(0, bool)))
    return eps


def context(data: Split, cfg: ExperimentConfig, seed: int, kind: str, progress: bool, cache_dir: Path | None,
            store: UnitStore) -> SeedContext:
    eps = cfg.evaluation.eps if kind == "pgd-at" else matched_eps(data, cfg, seed, progress, cache_dir, store)
    model = _train(data, cfg, seed, kind, progress, cache_dir)
    graph = model_graph(model, data.input_shape)
    train = held_out(data)[0]
    calib = cfg.calibration.make(graph, train.x_train, train.y_train, eps, seed, model)
    return SeedContext(kind, seed, model, graph, eps, calib, data.x_test[:cfg.n_eval], data.y_test[:cfg.n_eval])


def f1_plan(graph: Graph, bits: int, clip_mode: str, clips: tuple[float, ...]) -> QuantPlan:
    """Uniform ``bits`` with max-abs scales, or each layer's MSE-optimal clip from ``clips``."""
    layers = {n.name: LayerSetting(bits, 1.0) if clip_mode == "maxabs" else mse_clip(n.weight, bits, clips)
              for n in graph.weighted()}
    return QuantPlan(layers, name=f"w{bits}-{clip_mode}", meta={"method": f"uniform-{clip_mode}", "search_time_s": "0"})


@dataclass(frozen=True)
class UnitTask:
    """One unit to compute: which model (kind, seed), budget label and method; ``laaq_evals``: for
    ``random-best``, as many random plans as LAAQ's refinement evaluated at that seed and budget."""

    kind: str
    seed: int
    budget: str
    method: str
    laaq_evals: int = 0

    @property
    def key(self) -> str:
        return unit_key(self.kind, self.seed, self.budget, self.method)


def _plan(cfg: ExperimentConfig, ctx: SeedContext, task: UnitTask) -> QuantPlan | None:
    """The unit's plan (None: the float model), searched here when the unit is an F2 method."""
    if task.budget == "fp32":
        return None
    if task.budget == "f1":
        bits, mode = task.method[1:].split("-")
        return f1_plan(ctx.graph, int(bits), mode, cfg.search.clips)
    budget = budget_for(task.budget, ctx.bops_int8, cfg.latency())
    base, group = split_method(task.method)
    scfg = replace(cfg.search, seed=ctx.seed, random_count=cfg.random_count, group_size=group)
    if base == "laaq-ilp":
        return search_plan("laaq", ctx.graph, ctx.calib, budget, replace(scfg, refine=False))
    if base == "random-best":  # equal compute: as many exact-loss evaluations as LAAQ's refinement made
        scfg = replace(scfg, random_count=max(cfg.random_count, task.laaq_evals))
    return search_plan(base, ctx.graph, ctx.calib, budget, scfg)


def compute_unit(cfg: ExperimentConfig, ctx: SeedContext, task: UnitTask, device: str = "cpu", node: str = "") -> Unit:
    """One unit — its plan searched, its bit-exact twin (or the float model) attacked — as a :class:`Unit`.

    Pure: writes nothing (the driver alone stores units), so any executor may run it, anywhere. The row
    records where it ran (``node``), its wall time and this process's CPU time (the study's core-hours)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    plan = _plan(cfg, ctx, task)
    t0 = time.perf_counter()
    predict = ctx.model if plan is None else twin_for(ctx.graph, plan, ctx.calib)
    ecfg = replace(cfg.evaluation, eps=ctx.eps, seed=ctx.seed)
    r = evaluate(predict, ctx.x, ctx.y, ecfg, device=device)
    (c_lo, c_hi), (r_lo, r_hi) = (wilson(int(v.sum()), v.size) for v in (r.clean, r.robust))
    row: dict[str, object] = {
        "seed": ctx.seed, "model": ctx.kind, "budget": task.budget, "method": task.method, "eps": ctx.eps,
        "attack": ecfg.preset.name, "n_eval": int(r.clean.size),
        "clean": float(r.clean.mean()), "clean_lo": c_lo, "clean_hi": c_hi,
        "robust": float(r.robust.mean()), "robust_lo": r_lo, "robust_hi": r_hi,
        "avg_bits": 32.0, "bops_frac": 16.0, "search_s": 0.0, "eval_s": time.perf_counter() - t0, "plan": "float32"}
    if plan is not None:
        used = spend(plan.layers, layer_stats(ctx.graph), Budget(avg_bits=99, bops=1e30, model_bytes=1e30))
        row.update(avg_bits=used["avg_bits"], bops_frac=used["bops"] / ctx.bops_int8,
                   weight_kib=used["model_bytes"] / 1024, search_s=float(plan.meta.get("search_time_s", 0.0)),
                   plan=_alloc_str(plan))
        row.update(plan_latency(cfg, plan))
    if task.budget.startswith("lat"):
        row["latency_table"] = cfg.latency_digest()
    if task.budget == "fp32":
        row["kurtosis"] = json.dumps(kurtosis(ctx.graph))
    row.update(node=node or platform.node(), unit_s=round(time.perf_counter() - wall0, 3),
               cpu_s=round(time.process_time() - cpu0, 3))
    return Unit(task.key, row, r.clean, r.robust, plan.to_json() if plan is not None else "")


def plan_latency(cfg: ExperimentConfig, plan: QuantPlan) -> dict[str, float]:
    """The plan's summed per-layer table latency (ms) and its fraction of the uniform-8 plan's, when the config
    has a table: what the plan costs on that target at batch 1, reported beside every plan's accuracy."""
    table = cfg.latency()
    if not table:
        return {}
    ms = sum(table[n][s.bits] for n, s in plan.layers.items())
    return {"latency_ms": ms, "latency_frac": ms / latency_range(table)[1]}


def current(cfg: ExperimentConfig, store: UnitStore, key: str) -> bool:
    """A finished unit that belongs to ``cfg``: a latency unit only if searched under ``cfg``'s table."""
    if not store.has(key):
        return False
    return key.split("|")[2][:3] != "lat" or store.get(key).row.get("latency_table") == cfg.latency_digest()


def _laaq_for(method: str) -> str:
    """The LAAQ unit a ``random-best`` unit takes its number of random plans from (same group size)."""
    _, group = split_method(method)
    return "laaq" + (f"{GROUP_SUFFIX}{group}" if group else "")


def laaq_evaluations(store: UnitStore, kind: str, seed: int, budget: str, laaq: str = "laaq") -> int:
    """How many exact-loss evaluations LAAQ's refinement made at this seed and budget (0: not run)."""
    key = unit_key(kind, seed, budget, laaq)
    if not store.has(key) or not store.get(key).plan:
        return 0
    return int(QuantPlan.from_json(store.get(key).plan).meta.get("refine_evals", 0))


def _ordered(methods: tuple[str, ...]) -> list[str]:
    """LAAQ before "random-best" (which gets LAAQ's number of exact-loss evaluations)."""
    return sorted(methods, key=lambda m: (split_method(m)[0] == "random-best", methods.index(m)))


def pending(cfg: ExperimentConfig, store: UnitStore, kind: str, seed: int) -> list[tuple[str, str]]:
    keys = [("fp32", "fp32")] + [(b, m) for b in cfg.budget_labels() for m in _ordered(cfg.methods)]
    keys += [("f1", f"w{b}-{mode}") for b in cfg.f1_bits for mode in ("maxabs", "mse")]
    return [(b, m) for b, m in keys if not current(cfg, store, unit_key(kind, seed, b, m))]


def _waits_for(cfg: ExperimentConfig, store: UnitStore, task: UnitTask) -> str | None:
    """The key of the unfinished LAAQ unit a ``random-best`` task must wait for (None: ready now)."""
    if task.budget in ("fp32", "f1") or split_method(task.method)[0] != "random-best":
        return None
    laaq = _laaq_for(task.method)
    key = unit_key(task.kind, task.seed, task.budget, laaq)
    return key if laaq in cfg.methods and not current(cfg, store, key) else None


def run_grid(cfg: ExperimentConfig, store: UnitStore, progress: bool = True, cache_dir: Path | None = None,
             log: Callable[[str], None] = print, executor: Executor | None = None, device: str = "cpu",
             data: Split | None = None) -> None:
    """Every unfinished unit of ``cfg``; each finished unit is on disk (written here, by the driver alone)
    as soon as it is back. The models are trained or loaded and calibrated here, once per (seed, kind); the
    units go to ``executor`` (default: in this process, in order), ``random-best`` after its LAAQ unit."""
    executor = executor or LocalExecutor()
    data = data if data is not None else load_dataset(cfg.dataset, seed=0, data_dir=cfg.data_dir)
    total = sum(len(pending(cfg, store, k, s)) for s in cfg.seeds for k in cfg.models)
    bar = tqdm(total=total, desc=f"experiment units ({executor.describe()})", unit="unit", disable=not progress)
    say = (lambda m: bar.write(m)) if progress else log
    contexts: dict[tuple[str, int], SeedContext] = {}
    waiting: dict[str, list[UnitTask]] = {}

    def submit(task: UnitTask) -> None:
        f2 = task.budget not in ("fp32", "f1")
        laaq = _laaq_for(task.method) if f2 and split_method(task.method)[0] == "random-best" else ""
        if laaq:
            task = replace(task, laaq_evals=laaq_evaluations(store, task.kind, task.seed, task.budget, laaq))
        executor.submit(compute_unit, cfg, contexts[(task.kind, task.seed)], task, device)

    try:
        for seed in cfg.seeds:
            for kind in cfg.models:
                todo = [UnitTask(kind, seed, b, m) for b, m in pending(cfg, store, kind, seed)]
                if not todo:
                    continue
                contexts[(kind, seed)] = context(data, cfg, seed, kind, progress, cache_dir, store)
                for task in todo:
                    after = _waits_for(cfg, store, task)
                    if after is None:
                        submit(task)
                    else:
                        waiting.setdefault(after, []).append(task)
        while executor.pending():
            unit = executor.next_done()
            store.put(unit)
            r = unit.row
            say(f"[{r['model']} s{r['seed']} {r['budget']} {r['method']}] clean {r['clean']:.3f} robust "
                f"{r['robust']:.3f} ({r['eval_s']:.0f} s, {r.get('node', '')})")
            bar.update(1)
            for task in waiting.pop(unit.key, []):
                submit(task)
    finally:
        bar.close()
        executor.close()


def rows_and_outcomes(cfg: ExperimentConfig, store: UnitStore) -> tuple[list[dict[str, object]], dict[str, np.ndarray]]:
    """The finished units that belong to ``cfg`` (its seeds, models, budgets, methods)."""
    wanted_budgets = {"fp32", "f1", *cfg.budget_labels()}
    rows, outcomes = [], {}
    for u in store:
        kind, seed, budget, method = u.key.split("|")
        if budget == "match" or kind not in cfg.models or int(seed) not in cfg.seeds or budget not in wanted_budgets:
            continue
        if budget not in ("fp32", "f1") and method not in cfg.methods:  # e.g. grouped units of another analysis
            continue
        if budget.startswith("lat") and u.row.get("latency_table") != cfg.latency_digest():  # another table's
            continue
        rows.append(u.row)
        outcomes[u.key] = u.robust
    return rows, outcomes


def to_plan(unit: Unit) -> QuantPlan | None:
    return QuantPlan.from_json(unit.plan) if unit.plan else None
