"""The F1/F2 experiment: plain vs PGD-AT model × quantization method × {clean, PGD}, at one budget.

F1 — does the adversarially trained model lose more under uniform low-bit weights than the plain one?
F2 — does LAAQ beat every baseline on PGD accuracy at equal budget, and by how much?

Hygiene that the numbers rely on:

* every quantized model is evaluated on the :class:`~laaq.quant.twin.Twin` (bit-exact with the
  deployed integer artefact), attacked white-box through its STE gradient;
* attacks are *paired*: PGD's random starts come from a generator seeded by the PGD config, so all
  methods of one seed face the same starts; the worst case over restarts is reported;
* all methods get the same calibration data, the same budget, the same knapsack solver; the plan's
  realised average bits are in the table next to its accuracy;
* random plans are a distribution (mean ± std and the best of N), not one lucky or unlucky draw.

Outputs (written atomically: temp file + ``os.replace``): ``results.csv`` (one row per seed × model
× method), ``results.md`` (aggregated table + F1/F2 answers), ``results.png`` and the plans as JSON.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from laaq.attacks import PGDConfig, pgd
from laaq.data import Split, load_dataset
from laaq.graph import Graph
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_graph
from laaq.quant.twin import Twin
from laaq.search import Budget, Calibration, SearchConfig, make_calibration, random_plans, search_plan
from laaq.train import TrainConfig, train_or_load

SEARCH_METHODS = ("mse", "hessian", "sensitivity", "laaq")
METHOD_ORDER = ("fp32", "uniform-8", "uniform", "mse", "hessian", "sensitivity", "laaq-ilp", "laaq", "random")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines the experiment's numbers (defaults: MNIST-5k, SmallCNN, ε = 0.3)."""

    dataset: str = "mnist5k"
    data_dir: str | None = None
    arch: str = "smallcnn"
    seeds: tuple[int, ...] = (0, 1, 2)
    budget_bits: float = 4.0
    train_epochs: int = 5
    train_lr: float = 3e-3
    train_pgd: PGDConfig = field(default_factory=lambda: PGDConfig(eps=0.3, step_size=0.05, steps=10))
    eval_pgd: PGDConfig = field(default_factory=lambda: PGDConfig(eps=0.3, step_size=0.025, steps=20, restarts=1))
    calib_pgd: PGDConfig = field(default_factory=lambda: PGDConfig(eps=0.3, step_size=0.05, steps=10))
    n_calib: int = 256
    n_eval: int = 1000
    random_count: int = 8
    search: SearchConfig = field(default_factory=SearchConfig)

    @classmethod
    def quick(cls) -> ExperimentConfig:
        """Small enough for a test: sklearn digits (8×8), the tiny CNN, one seed, short attacks."""
        p = PGDConfig(eps=0.1, step_size=0.03, steps=4)
        return cls(dataset="digits", arch="tinycnn", seeds=(0,), train_epochs=5, train_lr=1e-2, train_pgd=p,
                   calib_pgd=p, eval_pgd=PGDConfig(eps=0.1, step_size=0.03, steps=5), n_calib=48, n_eval=100,
                   random_count=2, search=SearchConfig(clips=(1.0, 0.8, 0.6), refine_sweeps=1, refine_max_evals=30,
                                                       hessian_max_iter=10))

    @classmethod
    def cifar(cls, data_dir: str) -> ExperimentConfig:
        """CIFAR-10 / ResNet-20 at ε = 8/255, PGD-20 with 2 restarts (needs real compute)."""
        e = 8 / 255
        return cls(dataset="cifar10", data_dir=data_dir, arch="resnet20", train_epochs=30, train_lr=1e-2,
                   train_pgd=PGDConfig(eps=e, step_size=2 / 255, steps=7),
                   eval_pgd=PGDConfig(eps=e, step_size=2 / 255, steps=20, restarts=2),
                   calib_pgd=PGDConfig(eps=e, step_size=2 / 255, steps=10), n_eval=1000)


def _evaluate(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, cfg: PGDConfig,
              batch: int = 500) -> tuple[float, float]:
    """(clean accuracy, PGD accuracy) of a differentiable predictor, batched, paired starts by cfg.seed."""
    clean = hits = 0
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        with torch.no_grad():
            clean += int((predict(xb).argmax(1) == yb).sum())
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + i)
        xa = pgd(predict, xb, yb, cfg, generator=gen)
        with torch.no_grad():
            hits += int((predict(xa).argmax(1) == yb).sum())
    return clean / len(x), hits / len(x)


def twin_for(graph: Graph, plan: QuantPlan, calib: Calibration) -> Twin:
    """The bit-exact twin of a plan, with activation scales calibrated on clean + adversarial inputs."""
    return Twin(quantize_graph(graph, plan, calib.all_x)).eval()


def _alloc_str(plan: QuantPlan) -> str:
    return " ".join(f"{n}:{s.bits}b@{s.clip:g}" for n, s in plan.layers.items())


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write via a temp file in the same directory, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix + ".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_seed(data: Split, cfg: ExperimentConfig, seed: int, adversarial: bool, progress: bool = True,
             cache_dir: Path | None = None) -> tuple[list[dict[str, object]], dict[str, QuantPlan]]:
    """All methods for one (seed, model kind): rows of the results table and the plans."""
    kind = "pgd-at" if adversarial else "plain"
    tcfg = TrainConfig(arch=cfg.arch, epochs=cfg.train_epochs, lr=cfg.train_lr, adversarial=adversarial,
                       pgd=cfg.train_pgd, seed=seed)
    model, _, _ = train_or_load(data, tcfg, cache_dir=cache_dir, progress=progress)
    graph = model.to_graph()
    rng = np.random.default_rng(seed)
    idx = torch.as_tensor(rng.choice(len(data.x_train), size=min(cfg.n_calib, len(data.x_train)), replace=False))
    calib = make_calibration(graph, data.x_train[idx], data.y_train[idx], replace(cfg.calib_pgd, seed=seed), model)
    xe, ye = data.x_test[: cfg.n_eval], data.y_test[: cfg.n_eval]
    eval_pgd = replace(cfg.eval_pgd, seed=seed)
    budget = Budget(avg_bits=cfg.budget_bits)
    scfg = replace(cfg.search, seed=seed, random_count=cfg.random_count)
    names = [n.name for n in graph.weighted()]
    params = {n.name: int(n.weight.size) for n in graph.weighted()}

    plans: dict[str, QuantPlan] = {"uniform-8": QuantPlan.uniform(names, 8)}
    for m in ("uniform", *SEARCH_METHODS):
        plans[m] = search_plan(m, graph, calib, budget, scfg)
    if scfg.refine:  # the ablation: LAAQ's knapsack solution before layer-wise refinement
        plans["laaq-ilp"] = search_plan("laaq", graph, calib, budget, replace(scfg, refine=False))
    for i, p in enumerate(random_plans(graph, budget, cfg.random_count, scfg)):
        plans[f"random#{i}"] = p

    rows: list[dict[str, object]] = []
    base = {"seed": seed, "model": kind, "budget_bits": cfg.budget_bits, "eps": eval_pgd.eps}
    t0 = time.perf_counter()
    clean, rob = _evaluate(model.eval(), xe, ye, eval_pgd)
    rows.append({**base, "method": "fp32", "clean": clean, "pgd": rob, "avg_bits": 32.0, "search_s": 0.0,
                 "eval_s": time.perf_counter() - t0, "plan": "float32"})
    bar = tqdm(plans.items(), desc=f"evaluate seed {seed} {kind}", disable=not progress, unit="plan")
    for label, plan in bar:
        t0 = time.perf_counter()
        clean, rob = _evaluate(twin_for(graph, plan, calib), xe, ye, eval_pgd)
        rows.append({**base, "method": label.split("#")[0], "clean": clean, "pgd": rob,
                     "avg_bits": float(plan.meta.get("avg_bits", plan.avg_bits(params))),
                     "search_s": float(plan.meta.get("search_time_s", 0.0)), "eval_s": time.perf_counter() - t0,
                     "plan": _alloc_str(plan)})
    return rows, plans


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method): mean ± std over seeds (random: over all draws, plus the mean best-of-N)."""
    out = []
    for (model, method), g in df.groupby(["model", "method"], sort=False):
        row = {"model": model, "method": method, "clean_mean": g.clean.mean(), "clean_std": g.clean.std(ddof=0),
               "pgd_mean": g.pgd.mean(), "pgd_std": g.pgd.std(ddof=0), "avg_bits": g.avg_bits.mean(),
               "search_s": g.search_s.mean(), "n": len(g)}
        if method == "random":
            row["pgd_best_of_n"] = g.groupby("seed").pgd.max().mean()
        out.append(row)
    agg = pd.DataFrame(out)
    agg["order"] = agg.method.map({m: i for i, m in enumerate(METHOD_ORDER)})
    return agg.sort_values(["model", "order"]).drop(columns="order").reset_index(drop=True)


def answer(df: pd.DataFrame) -> str:
    """Plain-language answers to F1 and F2 computed from the per-seed rows (paired by seed)."""
    def per_seed(model: str, method: str, col: str) -> pd.Series:
        g = df[(df.model == model) & (df.method == method)]
        return g.groupby("seed")[col].mean()

    lines = []
    drops = {}
    for model in ("plain", "pgd-at"):
        if not ((df.model == model) & (df.method == "fp32")).any():
            continue
        drops[model] = {c: (per_seed(model, "fp32", c) - per_seed(model, "uniform", c)) for c in ("clean", "pgd")}
    if len(drops) == 2:
        dc_p, dc_a = drops["plain"]["clean"].mean(), drops["pgd-at"]["clean"].mean()
        dr_p, dr_a = drops["plain"]["pgd"].mean(), drops["pgd-at"]["pgd"].mean()
        # a difference under one point on a few hundred images is noise, not a finding
        verdict = "inconclusive" if abs(dc_a - dc_p) < 0.01 else ("holds" if dc_a > dc_p else "does not hold")
        lines.append(f"F1 ({verdict} on clean accuracy): uniform low-bit costs the PGD-AT "
                     f"model {100 * dc_a:.1f} clean points vs {100 * dc_p:.1f} for the plain model (mean over seeds); "
                     f"PGD accuracy drops {100 * dr_a:.1f} (AT) vs {100 * dr_p:.1f} (plain; its PGD accuracy is near 0 "
                     "already, so this comparison is uninformative for the plain model).")
    for model in ("pgd-at", "plain"):
        if not ((df.model == model) & (df.method == "laaq")).any():
            continue
        laaq = per_seed(model, "laaq", "pgd")
        if df[df.model == model].pgd.max() < 0.01:
            lines.append(f"F2 [{model}]: uninformative: every method has ~0% PGD accuracy at this eps.")
            continue
        parts, beats_all, every_seed = [], True, True
        for m in ("uniform", "mse", "hessian", "sensitivity", "random"):
            other = per_seed(model, m, "pgd")
            if other.empty:
                continue
            d = laaq - other
            wins = int((d > 0).sum())
            parts.append(f"{m} {100 * d.mean():+.1f} pts ({wins}/{len(d)} seeds won)")
            beats_all &= d.mean() > 0
            every_seed &= wins == len(d)
        best = df[(df.model == model) & (df.method == "random")].groupby("seed").pgd.max()
        d_best = (laaq - best).mean() if not best.empty else float("nan")
        verdict = ("LAAQ beats every baseline on mean PGD accuracy" if beats_all else
                   "LAAQ does NOT beat every baseline on mean PGD accuracy")
        if beats_all and not every_seed:
            verdict += " (but not on every seed)"
        lines.append(f"F2 [{model}]: {verdict}: " + "; ".join(parts)
                     + f"; vs best-of-N random {100 * d_best:+.1f} pts.")
    return "\n".join(lines)


def to_markdown(agg: pd.DataFrame, cfg: ExperimentConfig, summary: str) -> str:
    head = (f"# LAAQ experiment — {cfg.dataset}/{cfg.arch}, budget avg {cfg.budget_bits:g}-bit weights "
            f"(8-bit activations), seeds {list(cfg.seeds)}\n\n"
            f"PGD: eps={cfg.eval_pgd.eps:g}, step={cfg.eval_pgd.step_size:g}, "
            f"steps={cfg.eval_pgd.steps}, restarts={cfg.eval_pgd.restarts}, on the bit-exact twin, paired starts; "
            f"{cfg.n_eval} test images. 'uniform' = widest uniform width within the budget.\n\n")
    lines = ["| model | method | clean % | PGD % | avg bits | search s |", "|---|---|---|---|---|---|"]
    for r in agg.itertuples():
        pgd_cell = f"{100 * r.pgd_mean:.1f} ± {100 * r.pgd_std:.1f}"
        if r.method == "random" and not pd.isna(getattr(r, "pgd_best_of_n", np.nan)):
            pgd_cell += f" (best of N: {100 * r.pgd_best_of_n:.1f})"
        lines.append(f"| {r.model} | {r.method} | {100 * r.clean_mean:.1f} ± {100 * r.clean_std:.1f} | {pgd_cell} | "
                     f"{r.avg_bits:.2f} | {r.search_s:.2f} |")
    return head + "\n".join(lines) + "\n\n## Answers\n\n" + summary.replace("\n", "\n\n") + "\n"


def plot(agg: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(agg.model))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        g = agg[agg.model == model]
        xs = np.arange(len(g))
        ax.bar(xs - 0.2, 100 * g.clean_mean, 0.4, yerr=100 * g.clean_std, label="clean")
        ax.bar(xs + 0.2, 100 * g.pgd_mean, 0.4, yerr=100 * g.pgd_std, label="PGD")
        ax.set_xticks(xs, list(g.method), rotation=30)
        ax.set_title(model)
        ax.set_ylabel("accuracy %")
        ax.set_ylim(0, 100)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def run_experiment(cfg: ExperimentConfig | None = None, out_dir: str | Path = "results/experiment",
                   progress: bool = True, cache_dir: Path | None = None,
                   models: tuple[bool, ...] = (False, True)) -> tuple[pd.DataFrame, str]:
    """Run every (seed, model kind), write CSV/markdown/plot/plans into ``out_dir``; returns (rows, summary)."""
    cfg = cfg or ExperimentConfig()
    out = Path(out_dir)
    data = load_dataset(cfg.dataset, seed=0, data_dir=cfg.data_dir)
    rows: list[dict[str, object]] = []
    for seed in cfg.seeds:
        for adv in models:
            r, plans = run_seed(data, cfg, seed, adv, progress, cache_dir)
            rows += r
            for label, p in plans.items():
                if "#" not in label:
                    path = out / "plans" / f"{'pgd-at' if adv else 'plain'}-s{seed}-{label}.json"
                    _atomic_write(path, lambda t, p=p: Path(t).write_text(p.to_json()))
    df = pd.DataFrame(rows)
    return df, write_outputs(df, cfg, out)


def write_outputs(df: pd.DataFrame, cfg: ExperimentConfig, out_dir: str | Path) -> str:
    """Aggregate rows (possibly from several runs) and write CSV, markdown and plot; returns the F1/F2 summary."""
    out = Path(out_dir)
    agg = aggregate(df)
    summary = answer(df)
    _atomic_write(out / "results.csv", lambda t: df.to_csv(t, index=False))
    _atomic_write(out / "summary.csv", lambda t: agg.to_csv(t, index=False))
    _atomic_write(out / "results.md", lambda t: Path(t).write_text(to_markdown(agg, cfg, summary)))
    _atomic_write(out / "results.png", lambda t: plot(agg, t))
    return summary


def combine(csv_paths: list[str | Path], cfg: ExperimentConfig, out_dir: str | Path) -> tuple[pd.DataFrame, str]:
    """Merge per-seed runs (e.g. seeds run in parallel processes) into one table, plot and summary."""
    df = pd.concat([pd.read_csv(p) for p in csv_paths], ignore_index=True)
    df = df.drop_duplicates(subset=["seed", "model", "method", "plan", "clean", "pgd"], keep="last")
    seeds = tuple(sorted(int(s) for s in df.seed.unique()))
    return df, write_outputs(df, replace(cfg, seeds=seeds), out_dir)
