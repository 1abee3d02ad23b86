"""Does each metric predict damage? Rank correlation of every cost metric with the measured robustness loss.

Every search method reduces to a separable table ``cost[layer][(bits, clip)]`` (see
:mod:`laaq.search`); a plan's predicted cost is ``Σ_l cost[l][s_l]``. This module measures how well that
prediction ranks plans by what they really cost:

1. **A model with a validation split.** The model is trained with the arch's recipe on the training
   split *minus its last* ``n_val`` *images*; those held-out training images are the validation split.
   The test split is never read.
2. **Random mixed plans spread over budgets.** Plan ``i`` gets a target average (parameter-weighted)
   bit width stratified over ``[lo, hi]``, per-layer clips drawn from the search's clip grid and
   Dirichlet layer preferences; starting at the smallest width, preferred layers are raised one width at a
   time while the target allows (:func:`sample_plans`). Plans whose average falls below ``lo`` are redrawn.
3. **Measured damage.** Each plan's bit-exact STE twin (8-bit activations calibrated as ``bench`` does) is
   attacked with APGD-CE (torchattacks, fixed seed) on the first ``n_eval`` validation images; the drop is
   the fp32 model's robust accuracy under the same attack on the same images minus the plan's.
4. **Predicted cost** of every metric in :data:`METRICS`, from the calibration set of
   :class:`~laaq.search.CalibrationRecipe` (drawn from the reduced training split).
5. **Spearman ρ** between predicted cost and measured drop over plans, with a percentile bootstrap
   interval over plans; and the *partial* ρ given the plan's average bits (rank residuals), since the
   search only ever compares plans at one budget — a metric that merely counts bits scores well on ρ.

Results are cached and resumable: one CSV row per measured plan, rewritten atomically after each plan;
metric tables in a JSON next to it. Entry point: :func:`run` (script: ``benchmarks/metric_validity.py``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from laaq.atomic import write_atomic
from laaq.attacks import PGDConfig, pgd_step
from laaq.data import Split
from laaq.experiment.executor import Executor, LocalExecutor
from laaq.graph import Graph
from laaq.importer import model_graph
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import quantize_graph
from laaq.quant.twin import Twin
from laaq.robustness import AttackPreset, EvalConfig, evaluate
from laaq.search import Calibration, CalibrationRecipe
from laaq.search.baselines import hessian_costs, mse_costs, sensitivity_costs
from laaq.search.metric import laaq_costs, norm_product_costs
from laaq.search.solver import CANDIDATE_BITS, CLIP_GRID, candidate_settings
from laaq.train import TrainConfig, train_or_load

CostTable = dict[str, dict[LayerSetting, float]]

_PGD7 = PGDConfig(eps=0.3, step_size=pgd_step(0.3, 7), steps=7, restarts=1, random_start=True, seed=0)
# The PGD-AT recipes of the MNIST models in this study; each is the checkpoint that
# ``laaq-bench … --arch A --epochs E --lr LR`` (seed 0, ε 0.3) trains on the same data.
RECIPES: dict[str, TrainConfig] = {
    "vgg8": TrainConfig(arch="vgg8", epochs=6, lr=3e-3, pgd=_PGD7),  # --arch vgg8 --epochs 6 --lr 3e-3
    "smallcnn": TrainConfig(arch="smallcnn", epochs=6, lr=1e-3, pgd=_PGD7),  # the CLI's defaults (make bench)
    # the experiment's SmallCNN (ExperimentConfig: 5 epochs, lr 3e-3, PGD-10 step 0.05)
    "smallcnn-exp": TrainConfig(arch="smallcnn", epochs=5, lr=3e-3, pgd=PGDConfig(eps=0.3, step_size=0.05, steps=10)),
}

# metric name -> what it is (names follow the code: SearchConfig.mode / attack_weight, search methods)
METRICS: dict[str, str] = {
    "laaq": "LAAQ default: E[g_l(x')^2 ||e_l||^2], local tail Lipschitz g_l by power iteration (mode 'lipschitz')",
    "laaq-jvp": "LAAQ mode 'jvp': E||J_l(x') e_l||^2, each error propagated exactly to first order",
    "laaq-amp": "LAAQ 'lipschitz' + the log-Lipschitz attack term (attack_weight 1)",
    "norm-product": "textbook bound (1): prod_{k>l} ||W_k||_2 * ||W_l - Q(W_l)||_2 * rms||a_{l-1}(x')|| (exact norms)",
    "mse": "||W - Q(W)||_F^2 (baseline 'mse')",
    "hessian": "HAWQ-V3: Hutchinson Tr(H_l)/n_l * ||W - Q(W)||_F^2, clean loss (baseline 'hessian')",
    "sensitivity": "one layer quantized alone: adversarial cross-entropy increase, summed (baseline 'sensitivity')",
}


@dataclass(frozen=True)
class ValidityConfig:
    """Everything that determines the numbers; its digest names the results folder."""

    dataset: str = "mnist5k"
    train: TrainConfig = field(default_factory=lambda: RECIPES["vgg8"])
    n_val: int = 500  # held-out training images (the training split's last n_val), never trained on
    n_eval: int = 200  # validation images attacked per plan
    n_plans: int = 60
    bits_range: tuple[float, float] = (2.5, 6.0)
    bits: tuple[int, ...] = CANDIDATE_BITS
    clips: tuple[float, ...] = CLIP_GRID
    eps: float = 0.3
    apgd_steps: int = 50
    attack_seed: int = 0
    calibration: CalibrationRecipe = field(default_factory=CalibrationRecipe)
    hessian_max_iter: int = 50
    metrics: tuple[str, ...] = tuple(METRICS)
    plan_seed: int = 0
    bootstrap: int = 2000

    def preset(self) -> AttackPreset:
        return AttackPreset("apgd-ce", apgd_ce_steps=self.apgd_steps, check_samples=0, curve_samples=0)

    def eval_config(self) -> EvalConfig:
        return EvalConfig(self.preset(), self.eps, seed=self.attack_seed, checks=False)

    def digest(self) -> str:
        d = asdict(self)
        d.pop("bootstrap")  # analysis only
        d.pop("n_plans")  # more plans extend the same sequence (plan i does not depend on n_plans)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def describe(self) -> str:
        return (f"{self.train.arch} on {self.dataset} (trained without the last {self.n_val} training images); "
                f"{self.n_plans} plans, avg bits in [{self.bits_range[0]:g}, {self.bits_range[1]:g}], widths "
                f"{list(self.bits)}, clips {list(self.clips)}; damage = robust-accuracy drop vs fp32 under "
                f"APGD-CE {self.apgd_steps} steps x 1 restart (torchattacks, seed {self.attack_seed}), L-inf eps "
                f"{self.eps:g}, white-box on the bit-exact STE twin, first {self.n_eval} validation images")


# ------------------------------------------------------------------------------------------------ data

def holdout_split(data: Split, n_val: int) -> Split:
    """Training split minus its last ``n_val`` images (to train on); those images as the 'test' part (to
    validate on). The data set's own test split is dropped, so nothing downstream can read it."""
    if not 0 < n_val < len(data.x_train):
        raise ValueError(f"n_val must be in (0, {len(data.x_train)}), got {n_val}")
    k = len(data.x_train) - n_val
    return Split(f"{data.name}-val{n_val}", data.x_train[:k], data.y_train[:k], data.x_train[k:], data.y_train[k:],
                 data.normalization)


# ----------------------------------------------------------------------------------------------- plans

def avg_bits(alloc: Mapping[str, LayerSetting], params: Mapping[str, int]) -> float:
    total = sum(params.values())
    return sum(params[n] * s.bits for n, s in alloc.items()) / total


def sample_plans(params: Mapping[str, int], n: int, lo: float, hi: float, bits: Sequence[int],
                 clips: Sequence[float], seed: int = 0,
                 max_tries: int = 100) -> list[tuple[float, dict[str, LayerSetting]]]:
    """``n`` random mixed plans ``(target, allocation)`` with parameter-weighted average bits in ``[lo, hi]``.

    Plan ``i`` uses its own generator (``seed``, ``i``), so the first plans do not depend on ``n``. Its target
    is ``lo + (hi − lo)·u`` with ``u`` uniform in stratum ``i mod 10`` of ten, so targets cover the range
    evenly; each layer draws a clip from ``clips`` and a preference from a Dirichlet(0.5) draw; from the
    smallest width everywhere, a layer chosen with probability ∝ its preference is raised to the next width
    while the average stays ≤ target; a plan below ``lo`` is redrawn (after ``max_tries // 2`` failures with
    a target anywhere in the range: with one dominant layer, some strata hold no plan).
    """
    levels = sorted(bits)
    names = list(params)
    if not lo <= hi or avg_bits({m: LayerSetting(levels[-1]) for m in names}, params) < lo:
        raise ValueError(f"bits range [{lo}, {hi}] cannot be met with widths {levels}")
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        for t in range(max_tries):
            # the plan's stratum first; a model with a dominant layer may have no plan there: then anywhere
            u = ((i % 10) + rng.random()) / 10 if t < max_tries // 2 else rng.random()
            target = lo + (hi - lo) * u
            pref = rng.dirichlet(np.full(len(names), 0.5))
            alloc = {m: LayerSetting(levels[0], float(rng.choice(clips))) for m in names}
            open_ = list(range(len(names)))
            while open_:
                p = pref[open_] / pref[open_].sum()
                j = open_[int(rng.choice(len(open_), p=p))]
                m = names[j]
                k = levels.index(alloc[m].bits)
                cand = {**alloc, m: LayerSetting(levels[k + 1], alloc[m].clip)} if k + 1 < len(levels) else None
                if cand is not None and avg_bits(cand, params) <= target + 1e-9:
                    alloc = cand
                else:
                    open_.remove(j)
            if lo - 1e-9 <= avg_bits(alloc, params) <= hi + 1e-9:
                out.append((float(target), alloc))
                break
        else:
            raise ValueError(f"no plan in [{lo}, {hi}] after {max_tries} draws (plan {i})")
    return out


def alloc_str(alloc: Mapping[str, LayerSetting]) -> str:
    return " ".join(f"{n}:{s.bits}b@{s.clip:g}" for n, s in alloc.items())


def parse_alloc(text: str) -> dict[str, LayerSetting]:
    out = {}
    for item in text.split():
        name, rest = item.rsplit(":", 1)
        b, c = rest.split("b@")
        out[name] = LayerSetting(int(b), float(c))
    return out


# ------------------------------------------------------------------------------------------- metrics

def metric_tables(graph: Graph, calib: Calibration, settings: list[LayerSetting], metrics: Sequence[str],
                  hessian_max_iter: int = 50, seed: int = 0,
                  log: Callable[[str], None] = print) -> tuple[dict[str, CostTable], dict[str, float]]:
    """Cost table of each metric on the calibration set, and the seconds each took."""
    makers: dict[str, Callable[[], CostTable]] = {
        "laaq": lambda: laaq_costs(graph, calib.x, calib.x_adv, settings, "lipschitz", 0.0, seed),
        "laaq-jvp": lambda: laaq_costs(graph, calib.x, calib.x_adv, settings, "jvp", 0.0, seed),
        "laaq-amp": lambda: laaq_costs(graph, calib.x, calib.x_adv, settings, "lipschitz", 1.0, seed),
        "norm-product": lambda: norm_product_costs(graph, calib.x_adv, settings),
        "mse": lambda: mse_costs(graph, settings),
        "hessian": lambda: hessian_costs(graph, calib.x, calib.y, settings, max_iter=hessian_max_iter, seed=seed),
        "sensitivity": lambda: sensitivity_costs(graph, calib.x_adv, calib.y, settings),
    }
    unknown = [m for m in metrics if m not in makers]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(makers)}")
    tables, seconds = {}, {}
    for m in metrics:
        t0 = time.perf_counter()
        tables[m] = makers[m]()
        seconds[m] = round(time.perf_counter() - t0, 2)
        log(f"  metric {m}: {seconds[m]} s")
    return tables, seconds


def plan_cost(table: CostTable, alloc: Mapping[str, LayerSetting]) -> float:
    return float(sum(table[n][s] for n, s in alloc.items()))


def _tables_to_json(tables: Mapping[str, CostTable]) -> dict:
    return {m: {n: {f"{s.bits}b@{s.clip:g}": v for s, v in row.items()} for n, row in t.items()}
            for m, t in tables.items()}


def _tables_from_json(d: Mapping) -> dict[str, CostTable]:
    out: dict[str, CostTable] = {}
    for m, t in d.items():
        out[m] = {}
        for n, row in t.items():
            out[m][n] = {}
            for k, v in row.items():
                b, c = k.split("b@")
                out[m][n][LayerSetting(int(b), float(c))] = float(v)
    return out


# ------------------------------------------------------------------------------------------ statistics

def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank (as scipy.stats.rankdata's default)."""
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ: Pearson correlation of average ranks (nan if either side is constant)."""
    return _pearson(rankdata(np.asarray(a)), rankdata(np.asarray(b)))


def partial_spearman(a: Sequence[float], b: Sequence[float], given: Sequence[float]) -> float:
    """Spearman ρ of ``a`` and ``b`` with ``given`` held fixed: Pearson of the rank residuals after a
    least-squares line on the ranks of ``given`` (how well ``a`` ranks plans *at equal* ``given``)."""
    ra, rb, rg = rankdata(np.asarray(a)), rankdata(np.asarray(b)), rankdata(np.asarray(given))
    g = np.column_stack([np.ones_like(rg), rg])

    def resid(r: np.ndarray) -> np.ndarray:
        coef, *_ = np.linalg.lstsq(g, r, rcond=None)
        return r - g @ coef

    return _pearson(resid(ra), resid(rb))


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, reps: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` resampled units (nan draws skipped)."""
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(reps)])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def correlation_table(df: pd.DataFrame, metrics: Sequence[str], reps: int = 2000, seed: int = 0,
                      reference: str = "mse") -> pd.DataFrame:
    """Per metric: ρ(cost, drop) and partial ρ given avg bits, each with a bootstrap 95 % interval over plans,
    and ``d_ref``: its ρ minus ``reference``'s ρ, paired (the same resampled plans for both).

    Also the row ``avg-bits`` (predicted cost = −average bits): what counting bits alone achieves."""
    drop = df["drop"].to_numpy(float)
    bits = df["avg_bits"].to_numpy(float)
    ref = df[f"cost_{reference}"].to_numpy(float) if reference in metrics else None
    rows = []
    for m in ["avg-bits", *metrics]:
        cost = -bits if m == "avg-bits" else df[f"cost_{m}"].to_numpy(float)
        rho = spearman(cost, drop)
        lo, hi = bootstrap_ci(lambda i, c=cost: spearman(c[i], drop[i]), len(df), reps, seed)
        row = {"metric": m, "rho": rho, "rho_lo": lo, "rho_hi": hi}
        if m != "avg-bits":
            row["partial"] = partial_spearman(cost, drop, bits)
            row["partial_lo"], row["partial_hi"] = bootstrap_ci(
                lambda i, c=cost: partial_spearman(c[i], drop[i], bits[i]), len(df), reps, seed)
        if ref is not None:
            row["d_ref"] = rho - spearman(ref, drop)
            row["d_ref_lo"], row["d_ref_hi"] = bootstrap_ci(
                lambda i, c=cost: spearman(c[i], drop[i]) - spearman(ref[i], drop[i]), len(df), reps, seed)
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ the run

def _atomic_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def load_rows(path: Path) -> pd.DataFrame:
    """The cached plan rows (empty when absent or unreadable: a killed run never leaves half a file)."""
    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame()


@dataclass
class Prepared:
    """What one config needs before measuring plans: model, graph, data, calibration."""

    model: torch.nn.Module
    graph: Graph
    x_val: torch.Tensor
    y_val: torch.Tensor
    calib: Calibration
    train_s: float
    cached: bool


def prepare(data: Split, cfg: ValidityConfig, cache_dir: Path | None = None, progress: bool = False) -> Prepared:
    split = holdout_split(data, cfg.n_val)
    t0 = time.perf_counter()
    model, _, cached = train_or_load(split, cfg.train, cache_dir=cache_dir, progress=progress)
    train_s = time.perf_counter() - t0
    graph = model_graph(model, split.input_shape)  # the importer, as bench and experiment build graphs
    calib = cfg.calibration.make(graph, split.x_train, split.y_train, cfg.eps, cfg.plan_seed, model)
    return Prepared(model, graph, split.x_test[: cfg.n_eval], split.y_test[: cfg.n_eval], calib, train_s, cached)


def plan_row(prep: Prepared, ecfg: EvalConfig, i: int, target: float, alloc, params: dict[str, int],
             ref_robust: float, node: str = "") -> dict[str, object]:
    """One sampled plan quantized and attacked on its bit-exact twin: its ``plans.csv`` row (writes nothing,
    so an executor may run it anywhere; ``node``: where it ran)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    plan = QuantPlan(dict(alloc), name=f"plan{i}")
    twin = Twin(quantize_graph(prep.graph, plan, prep.calib.all_x)).eval()
    r = evaluate(twin, prep.x_val, prep.y_val, ecfg)
    return {"plan": i, "target": round(target, 4), "avg_bits": round(avg_bits(alloc, params), 4),
            "clean": r.clean_acc, "robust": r.robust_acc, "drop": round(ref_robust - r.robust_acc, 6),
            "seconds": round(time.perf_counter() - t0, 1), "alloc": alloc_str(alloc),
            "cpu_s": round(time.process_time() - cpu0, 2), "node": node or platform.node()}


def run(data: Split, cfg: ValidityConfig, out_dir: str | Path, cache_dir: Path | None = None,
        log: Callable[[str], None] = print, max_plans: int | None = None, executor: Executor | None = None
        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure (or resume) ``cfg.n_plans`` plans; returns (plan rows, correlation table) and writes
    ``plans.csv``, ``costs.json``, ``config.json`` and ``correlations.md`` under ``out_dir/<arch>-<digest>/``.

    ``max_plans`` stops after that many *new* plans this call (the rest resumes next time). ``executor``:
    who attacks the plans (:mod:`laaq.experiment.executor`: Ray tasks, or this process in order)."""
    out = Path(out_dir) / f"{cfg.train.arch}-{cfg.digest()}"
    out.mkdir(parents=True, exist_ok=True)
    _atomic_text(out / "config.json", json.dumps({"description": cfg.describe(), **asdict(cfg)}, indent=1,
                                                 default=str))
    prep = prepare(data, cfg, cache_dir)
    log(f"model {cfg.train.arch}: {'loaded' if prep.cached else 'trained'} in {prep.train_s:.1f} s")
    graph = prep.graph
    params = {n.name: int(n.weight.size) for n in graph.weighted()}
    settings = candidate_settings(cfg.bits, cfg.clips)

    costs_path = out / "costs.json"
    cached_tables = json.loads(costs_path.read_text()) if costs_path.exists() else {}
    tables = _tables_from_json(cached_tables.get("tables", {}))
    seconds = dict(cached_tables.get("seconds", {}))
    missing = [m for m in cfg.metrics if m not in tables]
    if missing:
        new, secs = metric_tables(graph, prep.calib, settings, missing, cfg.hessian_max_iter, cfg.plan_seed, log)
        tables.update(new)
        seconds.update(secs)
        _atomic_text(costs_path, json.dumps({"tables": _tables_to_json(tables), "seconds": seconds}))

    ecfg = cfg.eval_config()
    csv = out / "plans.csv"
    df = load_rows(csv)
    ref_path = out / "fp32.json"
    if ref_path.exists():
        ref = json.loads(ref_path.read_text())
    else:
        t0 = time.perf_counter()
        r = evaluate(prep.model, prep.x_val, prep.y_val, ecfg)
        ref = {"clean": r.clean_acc, "robust": r.robust_acc, "seconds": round(time.perf_counter() - t0, 1)}
        u8 = QuantPlan.uniform(list(params), 8)
        twin = Twin(quantize_graph(graph, u8, prep.calib.all_x)).eval()
        r8 = evaluate(twin, prep.x_val, prep.y_val, ecfg)
        ref.update(int8_clean=r8.clean_acc, int8_robust=r8.robust_acc)
        _atomic_text(ref_path, json.dumps(ref))
    log(f"fp32: clean {ref['clean']:.3f} robust {ref['robust']:.3f}; uniform int8 robust {ref['int8_robust']:.3f}")

    plans = sample_plans(params, cfg.n_plans, *cfg.bits_range, cfg.bits, cfg.clips, cfg.plan_seed)
    done = set(df["plan"].astype(int)) if len(df) else set()
    rows = df.to_dict("records") if len(df) else []
    executor = executor or LocalExecutor()
    new = 0
    try:
        for i, (target, alloc) in enumerate(plans):
            if i in done:
                prev = next(r for r in rows if int(r["plan"]) == i)
                if prev["alloc"] != alloc_str(alloc):
                    raise ValueError(f"{csv}: plan {i} differs from this config's draw; remove the folder to "
                                     "start over")
                continue
            if max_plans is not None and new >= max_plans:
                break
            executor.submit(plan_row, prep, ecfg, i, target, alloc, params, ref["robust"])
            new += 1
        while executor.pending():  # rows come back in any order; only this process writes plans.csv
            row = executor.next_done()
            rows.append(row)
            _atomic_text(csv, pd.DataFrame(rows).to_csv(index=False))
            log(f"  plan {row['plan']}: {row['avg_bits']:.2f} bits, robust {row['robust']:.3f} "
                f"(drop {row['drop']:+.3f}), {row['seconds']} s")
    finally:
        executor.close()
    df = pd.DataFrame(rows).sort_values("plan")
    df = df[df["plan"] < cfg.n_plans].reset_index(drop=True)  # a longer earlier run: analyse the first n_plans
    for m in cfg.metrics:  # costs come from the cached tables, so metrics can be added without re-attacking
        df[f"cost_{m}"] = [plan_cost(tables[m], parse_alloc(a)) for a in df["alloc"]]
    corr = correlation_table(df, cfg.metrics, cfg.bootstrap) if len(df) >= 3 else pd.DataFrame()
    if len(corr):
        _atomic_text(out / "correlations.md", to_markdown(corr, df, cfg, ref, seconds))
    return df, corr


def to_markdown(corr: pd.DataFrame, df: pd.DataFrame, cfg: ValidityConfig, ref: Mapping[str, float],
                seconds: Mapping[str, float]) -> str:
    lines = [f"# Metric validity — {cfg.train.arch}", "", cfg.describe() + ".", "",
             f"fp32 on these images: clean {ref['clean']:.3f}, robust {ref['robust']:.3f}; uniform int8 twin robust "
             f"{ref['int8_robust']:.3f}. Plans measured: {len(df)}; avg bits {df['avg_bits'].min():.2f}–"
             f"{df['avg_bits'].max():.2f}; drop {df['drop'].min():+.3f} to {df['drop'].max():+.3f} "
             f"(median {df['drop'].median():+.3f}).", "",
             "| metric | Spearman ρ [95 % CI] | partial ρ given avg bits [95 % CI] | ρ − ρ(mse) [95 % CI] | table s |",
             "|---|---|---|---|---|"]
    for r in corr.itertuples():
        part = "—" if r.metric == "avg-bits" else f"{r.partial:+.2f} [{r.partial_lo:+.2f}, {r.partial_hi:+.2f}]"
        d = f"{r.d_ref:+.2f} [{r.d_ref_lo:+.2f}, {r.d_ref_hi:+.2f}]" if "d_ref" in corr else "—"
        lines.append(f"| {r.metric} | {r.rho:+.2f} [{r.rho_lo:+.2f}, {r.rho_hi:+.2f}] | {part} | {d} | "
                     f"{seconds.get(r.metric, '')} |")
    lines += ["", "Intervals: percentile bootstrap over plans, " + f"{cfg.bootstrap} resamples.",
              "avg-bits: predicted cost = −(average bits) — what counting bits alone achieves.", ""]
    return "\n".join(lines)


__all__ = ["METRICS", "RECIPES", "ValidityConfig", "avg_bits", "bootstrap_ci", "correlation_table", "holdout_split",
           "metric_tables", "norm_product_costs", "partial_spearman", "rankdata", "run", "sample_plans", "spearman"]
