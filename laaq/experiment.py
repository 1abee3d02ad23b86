"""The F1/F2 experiment: plain vs PGD-AT model × quantization method × {clean, PGD}, at one budget.

F1 — does the adversarially trained model lose more under uniform low-bit weights than the plain one?
F2 — does LAAQ beat every baseline on PGD accuracy at equal budget, and by how much?

Hygiene that the numbers rely on:

* every quantized model is evaluated on the :class:`~laaq.quant.twin.Twin` (bit-exact with the
  deployed integer artefact) with the attack ensemble of :mod:`laaq.robustness` (``standard`` by
  default: PGD-20, APGD-CE, APGD-T, Square; per-image worst case), white-box through the STE gradient;
* the same seeds drive every method's attacks, and every method is scored on the same images, so
  methods are compared on **paired** per-image outcomes: each difference to a baseline gets a
  hierarchical paired bootstrap interval over seeds × images and a t-interval over seeds, and is called
  "not distinguishable" unless **both** exclude 0 (a percentile bootstrap over only 5 seeds is known to be
  too narrow, so it alone must not decide);
* all methods get the same calibration data (:class:`~laaq.search.CalibrationRecipe`, as ``bench``),
  the same budget and the same knapsack solver; the plan's realised average bits are in the table;
* random plans are a distribution (mean over draws and the best of N), not one lucky or unlucky draw.

Outputs (written atomically: temp file + ``os.replace``): ``results.csv`` (one row per seed × model
× method, with Wilson 95 % intervals), ``per_image.npz`` (robust outcome per image), ``differences.csv``
(each method − each baseline, with its interval), ``results.md`` (aggregated table + F1/F2 answers),
``results.png`` and the plans as JSON.
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

from laaq.attacks import PGDConfig
from laaq.data import Split, load_dataset
from laaq.graph import Graph
from laaq.importer import model_graph
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_graph
from laaq.quant.twin import Twin
from laaq.robustness import PRESETS, EvalConfig, evaluate
from laaq.search import Budget, Calibration, CalibrationRecipe, SearchConfig, random_plans, search_plan
from laaq.stats import DiffInterval, paired_bootstrap, t_interval, wilson
from laaq.train import TrainConfig, train_or_load

SEARCH_METHODS = ("mse", "hessian", "sensitivity", "laaq")
METHOD_ORDER = ("fp32", "uniform-8", "uniform", "mse", "hessian", "sensitivity", "laaq-ilp", "laaq", "random")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines the experiment's numbers (defaults: MNIST-5k, SmallCNN, ε = 0.3)."""

    dataset: str = "mnist5k"
    data_dir: str | None = None
    arch: str = "smallcnn"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    budget_bits: float = 4.0
    train_epochs: int = 5
    train_lr: float = 3e-3
    train_pgd: PGDConfig = field(default_factory=lambda: PGDConfig(eps=0.3, step_size=0.05, steps=10))
    # the ensemble's sanity checks belong to `bench` (they certify one deployed model); here: comparisons
    evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(PRESETS["standard"], 0.3, checks=False))
    calibration: CalibrationRecipe = field(default_factory=CalibrationRecipe)
    n_eval: int = 500
    random_count: int = 4
    search: SearchConfig = field(default_factory=SearchConfig)

    @classmethod
    def quick(cls) -> ExperimentConfig:
        """Small enough for a test: sklearn digits (8×8), the tiny CNN, one seed, short attacks."""
        p = PGDConfig(eps=0.1, step_size=0.03, steps=4)
        return cls(dataset="digits", arch="tinycnn", seeds=(0, 1), train_epochs=5, train_lr=1e-2, train_pgd=p,
                   evaluation=EvalConfig(PRESETS["quick"], 0.1, checks=False),
                   calibration=CalibrationRecipe(samples=48, attack_steps=4), n_eval=100, random_count=2,
                   search=SearchConfig(clips=(1.0, 0.8, 0.6), refine_sweeps=1, refine_max_evals=30,
                                                       hessian_max_iter=10))

    @classmethod
    def cifar(cls, data_dir: str) -> ExperimentConfig:
        """CIFAR-10 / ResNet-20 at ε = 8/255, the standard ensemble (needs real compute)."""
        e = 8 / 255
        return cls(dataset="cifar10", data_dir=data_dir, arch="resnet20", train_epochs=30, train_lr=1e-2,
                   train_pgd=PGDConfig(eps=e, step_size=2 / 255, steps=7),
                   evaluation=EvalConfig(PRESETS["standard"], e, checks=False), n_eval=1000)


@dataclass(frozen=True)
class Scores:
    """Per-image clean and robust outcomes of one model on the evaluation images."""

    clean: np.ndarray
    robust: np.ndarray

    def row(self) -> dict[str, float]:
        (c_lo, c_hi), (r_lo, r_hi) = (wilson(int(v.sum()), v.size) for v in (self.clean, self.robust))
        return {"clean": float(self.clean.mean()), "clean_lo": c_lo, "clean_hi": c_hi,
                "robust": float(self.robust.mean()), "robust_lo": r_lo, "robust_hi": r_hi}


def _evaluate(predict: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig) -> Scores:
    """Clean and ensemble-robust outcomes per image of a differentiable predictor (the twin / float model)."""
    r = evaluate(predict, x, y, cfg)
    return Scores(r.clean, r.robust)
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
             cache_dir: Path | None = None
             ) -> tuple[list[dict[str, object]], dict[str, QuantPlan], dict[str, np.ndarray]]:
    """All methods for one (seed, model kind): rows of the results table, the plans, per-image robust outcomes."""
    kind = "pgd-at" if adversarial else "plain"
    tcfg = TrainConfig(arch=cfg.arch, epochs=cfg.train_epochs, lr=cfg.train_lr, adversarial=adversarial,
                       pgd=cfg.train_pgd, seed=seed)
    model, _, _ = train_or_load(data, tcfg, cache_dir=cache_dir, progress=progress)
    graph = model_graph(model, data.input_shape)
    calib = cfg.calibration.make(graph, data.x_train, data.y_train, cfg.evaluation.eps, seed, model)
    xe, ye = data.x_test[: cfg.n_eval], data.y_test[: cfg.n_eval]
    ecfg = replace(cfg.evaluation, seed=seed)
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
    outcomes: dict[str, np.ndarray] = {}
    base = {"seed": seed, "model": kind, "budget_bits": cfg.budget_bits, "eps": ecfg.eps, "attack": ecfg.preset.name}
    t0 = time.perf_counter()
    sc = _evaluate(model.eval(), xe, ye, ecfg)
    outcomes["fp32"] = sc.robust
    rows.append({**base, "method": "fp32", **sc.row(), "avg_bits": 32.0, "search_s": 0.0,
                 "eval_s": time.perf_counter() - t0, "plan": "float32"})
    bar = tqdm(plans.items(), desc=f"evaluate seed {seed} {kind}", disable=not progress, unit="plan")
    for label, plan in bar:
        t0 = time.perf_counter()
        sc = _evaluate(twin_for(graph, plan, calib), xe, ye, ecfg)
        outcomes[label] = sc.robust
        rows.append({**base, "method": label.split("#")[0], **sc.row(),
                     "avg_bits": float(plan.meta.get("avg_bits", plan.avg_bits(params))),
                     "search_s": float(plan.meta.get("search_time_s", 0.0)), "eval_s": time.perf_counter() - t0,
                     "plan": _alloc_str(plan)})
    return rows, plans, outcomes


def method_outcomes(per_image: dict[str, np.ndarray], model: str, method: str, seeds: list[int]
                    ) -> list[np.ndarray] | None:
    """Per seed, the per-image robust score of ``method`` (random: the mean over its draws)."""
    out = []
    for s in seeds:
        keys = [k for k in per_image if k.split("|")[:2] == [model, str(s)]
                and k.split("|")[2].split("#")[0] == method]
        if not keys:
            return None
        out.append(np.mean([per_image[k].astype(float) for k in keys], axis=0))
    return out


BASELINES = ("uniform", "mse", "hessian", "sensitivity", "random", "fp32", "uniform-8")


def differences(df: pd.DataFrame, per_image: dict[str, np.ndarray]) -> pd.DataFrame:
    """Robust accuracy of each method minus each baseline, paired per image and seed, with intervals."""
    rows = []
    for model in dict.fromkeys(df.model):
        seeds = sorted(int(s) for s in df[df.model == model].seed.unique())
        for method in ("laaq", "laaq-ilp"):
            a = method_outcomes(per_image, model, method, seeds)
            if a is None:
                continue
            for base in BASELINES:
                b = method_outcomes(per_image, model, base, seeds)
                if b is None:
                    continue
                boot = paired_bootstrap(a, b, seed=0)
                tint = t_interval(np.array([x.mean() - y.mean() for x, y in zip(a, b, strict=True)]))
                rows.append({"model": model, "method": method, "baseline": base, "n_seeds": len(seeds),
                             "n_images": int(a[0].size), "diff": boot.mean, "boot_lo": boot.lo, "boot_hi": boot.hi,
                             "t_lo": tint.lo, "t_hi": tint.hi,
                             "verdict": "distinguishable" if boot.distinguishable and tint.distinguishable
                             else "not distinguishable"})
    return pd.DataFrame(rows)


def _seed_interval(per_seed: pd.Series) -> DiffInterval:
    t = t_interval(per_seed.to_numpy(float))
    return replace(t, lo=max(0.0, t.lo), hi=min(1.0, t.hi))


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method): mean over seeds with a 95 % t-interval over seeds (ddof = 1; random: the
    per-seed mean over its draws, plus the mean best-of-N)."""
    out = []
    for (model, method), g in df.groupby(["model", "method"], sort=False):
        clean, rob = g.groupby("seed").clean.mean(), g.groupby("seed").robust.mean()
        ci_c, ci_r = _seed_interval(clean), _seed_interval(rob)  # accuracies: the interval is cut to [0, 1]
        row = {"model": model, "method": method, "clean_mean": clean.mean(), "clean_lo": ci_c.lo,
               "clean_hi": ci_c.hi, "robust_mean": rob.mean(), "robust_lo": ci_r.lo, "robust_hi": ci_r.hi,
               "avg_bits": g.avg_bits.mean(), "search_s": g.search_s.mean(), "n_seeds": g.seed.nunique()}
        if method == "random":
            row["robust_best_of_n"] = g.groupby("seed").robust.max().mean()
        out.append(row)
    agg = pd.DataFrame(out)
    agg["order"] = agg.method.map({m: i for i, m in enumerate(METHOD_ORDER)})
    return agg.sort_values(["model", "order"]).drop(columns="order").reset_index(drop=True)


def answer(df: pd.DataFrame, diffs: pd.DataFrame) -> str:
    """Plain-language answers to F1 and F2, each difference with its 95 % interval (paired by seed / image)."""
    def per_seed(model: str, method: str, col: str) -> pd.Series:
        g = df[(df.model == model) & (df.method == method)]
        return g.groupby("seed")[col].mean()

    lines = []
    drops = {}
    for model in ("plain", "pgd-at"):
        if not ((df.model == model) & (df.method == "fp32")).any():
            continue
        drops[model] = {c: (per_seed(model, "fp32", c) - per_seed(model, "uniform", c)) for c in ("clean", "robust")}
    if len(drops) == 2:
        gap = t_interval((drops["pgd-at"]["clean"] - drops["plain"]["clean"]).dropna().to_numpy())
        dc_p, dc_a = drops["plain"]["clean"].mean(), drops["pgd-at"]["clean"].mean()
        dr_p, dr_a = drops["plain"]["robust"].mean(), drops["pgd-at"]["robust"].mean()
        verdict = ("not distinguishable" if not gap.distinguishable else ("holds" if gap.mean > 0 else "does not hold"))
        lines.append(f"F1 ({verdict} on clean accuracy): uniform low-bit costs the PGD-AT model {100 * dc_a:.1f} clean "
                     f"points vs {100 * dc_p:.1f} for the plain model; AT minus plain {gap.describe()} ({gap.method}). "
                     f"Robust accuracy drops {100 * dr_a:.1f} (AT) vs {100 * dr_p:.1f} (plain; its robust accuracy is "
                     "~0 already, so this comparison is uninformative for the plain model).")
    for model in ("pgd-at", "plain"):
        d = diffs[(diffs.model == model) & (diffs.method == "laaq")] if len(diffs) else diffs
        if d.empty:
            continue
        if df[df.model == model].robust.max() < 0.01:
            lines.append(f"F2 [{model}]: uninformative: every method has ~0% robust accuracy at this eps.")
            continue
        parts = [f"{r.baseline} {100 * r.diff:+.1f} pts (bootstrap [{100 * r.boot_lo:+.1f}, {100 * r.boot_hi:+.1f}], "
                 f"t [{100 * r.t_lo:+.1f}, {100 * r.t_hi:+.1f}])"
                 + ("" if r.verdict == "distinguishable" else " not distinguishable")
                 for r in d.itertuples() if r.baseline in ("uniform", "mse", "hessian", "sensitivity", "random")]
        base = d[d.baseline.isin(["uniform", "mse", "hessian", "sensitivity", "random"])]
        decided = base.verdict == "distinguishable"
        better = base[decided & (base["diff"] > 0)].baseline.tolist()
        worse = base[decided & (base["diff"] < 0)].baseline.tolist()
        same = base[~decided].baseline.tolist()
        if len(better) == len(base):
            verdict = "LAAQ beats every baseline on robust accuracy, each difference's interval above 0"
        else:
            found = [f"{what} {', '.join(names)}" for what, names in
                     (("better than", better), ("not distinguishable from", same), ("worse than", worse)) if names]
            verdict = "LAAQ does NOT beat every baseline: " + "; ".join(found)
        best = df[(df.model == model) & (df.method == "random")].groupby("seed").robust.max()
        d_best = (per_seed(model, "laaq", "robust") - best).mean() if not best.empty else float("nan")
        lines.append(f"F2 [{model}]: {verdict}. LAAQ minus baseline, robust accuracy, mean over "
                     f"{int(d.n_seeds.iloc[0])} seeds x {int(d.n_images.iloc[0])} images, 95 % intervals "
                     "(paired bootstrap over seeds x images; t over seeds): " + "; ".join(parts)
                     + f"; vs best-of-N random {100 * d_best:+.1f} pts (no interval: a maximum over draws).")
    return "\n".join(lines)


def to_markdown(agg: pd.DataFrame, diffs: pd.DataFrame, cfg: ExperimentConfig, summary: str) -> str:
    head = (f"# LAAQ experiment — {cfg.dataset}/{cfg.arch}, budget avg {cfg.budget_bits:g}-bit weights "
            f"(8-bit activations), seeds {list(cfg.seeds)}\n\n"
            f"Robust accuracy: {cfg.evaluation.describe()}; white-box on the bit-exact twin (float model for fp32), "
            f"Square black-box on the same function; {cfg.n_eval} test images, the same for every method and seed. "
            "'uniform' = widest uniform width within the budget. Cells: mean over seeds [95 % t-interval over "
            "seeds, ddof = 1].\n\n")
    lines = ["| model | method | clean % | robust % | avg bits | search s |", "|---|---|---|---|---|---|"]

    def cell(m: float, lo: float, hi: float) -> str:
        if not np.isfinite(lo):
            return f"{100 * m:.1f}"
        return f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

    for r in agg.itertuples():
        rob = cell(r.robust_mean, r.robust_lo, r.robust_hi)
        if r.method == "random" and not pd.isna(getattr(r, "robust_best_of_n", np.nan)):
            rob += f" (best of N: {100 * r.robust_best_of_n:.1f})"
        lines.append(f"| {r.model} | {r.method} | {cell(r.clean_mean, r.clean_lo, r.clean_hi)} | {rob} | "
                     f"{r.avg_bits:.2f} | {r.search_s:.2f} |")
    out = head + "\n".join(lines)
    if len(diffs):
        out += ("\n\n## Differences to each baseline (robust accuracy, paired)\n\n"
                "Method minus baseline in points; `bootstrap`: hierarchical paired bootstrap over seeds x images "
                "(2,000 replicates); `t`: t-interval of the per-seed differences (ddof = 1). 'distinguishable' "
                "only when both intervals exclude 0 (with 5 seeds the bootstrap over seeds alone is too narrow).\n\n"
                "| model | method | baseline | diff | bootstrap 95 % | t 95 % | verdict |\n"
                "|---|---|---|---|---|---|---|\n")
        out += "\n".join(f"| {r.model} | {r.method} | {r.baseline} | {100 * r.diff:+.1f} | "
                         f"[{100 * r.boot_lo:+.1f}, {100 * r.boot_hi:+.1f}] | "
                         f"[{100 * r.t_lo:+.1f}, {100 * r.t_hi:+.1f}] | {r.verdict} |" for r in diffs.itertuples())
    return out + "\n\n## Answers\n\n" + summary.replace("\n", "\n\n") + "\n"


def plot(agg: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(agg.model))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        g = agg[agg.model == model]
        xs = np.arange(len(g))
        for off, col, label in ((-0.2, "clean", "clean"), (0.2, "robust", "robust (ensemble)")):
            m, lo, hi = (g[f"{col}_{k}"].to_numpy(float) for k in ("mean", "lo", "hi"))
            err = np.where(np.isfinite(lo), [m - lo, hi - m], 0.0)
            ax.bar(xs + off, 100 * m, 0.4, yerr=100 * err, capsize=2, label=label)
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
    outcomes: dict[str, np.ndarray] = {}
    for seed in cfg.seeds:
        for adv in models:
            r, plans, per_img = run_seed(data, cfg, seed, adv, progress, cache_dir)
            rows += r
            outcomes.update({f"{'pgd-at' if adv else 'plain'}|{seed}|{k}": v for k, v in per_img.items()})
            for label, p in plans.items():
                if "#" not in label:
                    path = out / "plans" / f"{'pgd-at' if adv else 'plain'}-s{seed}-{label}.json"
                    _atomic_write(path, lambda t, p=p: Path(t).write_text(p.to_json()))
    df = pd.DataFrame(rows)
    return df, write_outputs(df, outcomes, cfg, out)


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **{k: v.astype(np.uint8) for k, v in arrays.items()})


def write_outputs(df: pd.DataFrame, outcomes: dict[str, np.ndarray], cfg: ExperimentConfig, out_dir: str | Path
                  ) -> str:
    """Aggregate rows (possibly from several runs) and write CSVs, per-image outcomes, markdown and plot;
    returns the F1/F2 summary."""
    out = Path(out_dir)
    agg = aggregate(df)
    diffs = differences(df, outcomes)
    summary = answer(df, diffs)
    _atomic_write(out / "per_image.npz", lambda t: _save_npz(t, outcomes))
    _atomic_write(out / "results.csv", lambda t: df.to_csv(t, index=False))
    _atomic_write(out / "summary.csv", lambda t: agg.to_csv(t, index=False))
    _atomic_write(out / "differences.csv", lambda t: diffs.to_csv(t, index=False))
    _atomic_write(out / "results.md", lambda t: Path(t).write_text(to_markdown(agg, diffs, cfg, summary)))
    _atomic_write(out / "results.png", lambda t: plot(agg, t))
    return summary


def combine(run_dirs: list[str | Path], cfg: ExperimentConfig, out_dir: str | Path) -> tuple[pd.DataFrame, str]:
    """Merge runs of disjoint seeds (e.g. run in parallel processes) into one table, plot and summary."""
    df = pd.concat([pd.read_csv(Path(d) / "results.csv") for d in run_dirs], ignore_index=True)
    df = df.drop_duplicates(subset=["seed", "model", "method", "plan", "clean", "robust"], keep="last")
    outcomes: dict[str, np.ndarray] = {}
    for d in run_dirs:
        with np.load(Path(d) / "per_image.npz") as z:
            outcomes.update({k: z[k].astype(bool) for k in z.files})
    seeds = tuple(sorted(int(s) for s in df.seed.unique()))
    return df, write_outputs(df, outcomes, replace(cfg, seeds=seeds), out_dir)
