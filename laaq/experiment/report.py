"""The experiment's written outputs: the markdown tables and the plots people would rather look at."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import ExperimentConfig


def _num(v: float, fmt: str) -> str:
    return format(v, fmt) if np.isfinite(v) else "—"


def _pct(m: float, lo: float, hi: float) -> str:
    if not np.isfinite(lo) or not np.isfinite(hi):
        return f"{100 * m:.1f}"
    return f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown(agg: pd.DataFrame, diffs: pd.DataFrame, f1: pd.DataFrame, kurt: pd.DataFrame, cost: pd.DataFrame,
             cfg: ExperimentConfig, summary: list[str]) -> str:
    ev = cfg.evaluation
    out = [f"# LAAQ experiment — {cfg.dataset}/{cfg.arch}, seeds {list(cfg.seeds)}, models {list(cfg.models)}\n",
           f"Robust accuracy: {ev.describe()} (per-image worst case), white-box through the STE gradient of each "
           f"plan's bit-exact twin (the float model for fp32), on the first {cfg.n_eval} test images — the same for "
           "every method and seed. PGD-AT model at eps = "
           f"{ev.eps:g}; the plain model at its matched radius (column eps). 8-bit activations. Cells: mean over "
           "seeds [95 % t-interval over seeds, ddof = 1]; avg bits / BOPs: what the plan spends (BOPs as a fraction "
           "of the uniform-8 model's); weight KiB: the plan's packed weights; latency: its summed per-layer "
           "batch-1 latency on the table's target, as a fraction of the int8 model's"
           f"{f' ({cfg.latency_source})' if cfg.latency_source else ' (no table in this run)'}. Budgets: `bitsB` = "
           "at most B average weight bits, `bopsF` = at most F x the int8 model's bit operations, `latP` = at most "
           "the latency P of the way from the fastest plan the table allows (0) to the int8 model (1).\n"]
    if summary:
        out += ["## Answers\n", *[f"- {s}" for s in summary], ""]
    out += ["## F2: every method at every budget\n",
            "| model | budget | method | clean % | robust % | avg bits | BOPs | weight KiB | latency | search s "
            "| seeds |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in agg[agg.budget != "f1"].itertuples():
        out.append(f"| {r.model} | {r.budget} | {r.method} | {_pct(r.clean_mean, r.clean_lo, r.clean_hi)} | "
                   f"{_pct(r.robust_mean, r.robust_lo, r.robust_hi)} | {r.avg_bits:.2f} | {r.bops_frac:.2f} | "
                   f"{_num(getattr(r, 'weight_kib', np.nan), '.1f')} | "
                   f"{_num(getattr(r, 'latency_frac', np.nan), '.3f')} | "
                   f"{r.search_s:.1f} | {r.n_seeds} |")
    if len(diffs):
        out += ["", "## LAAQ minus each baseline (robust accuracy, paired per image and seed)\n",
                "`bootstrap`: hierarchical paired bootstrap over seeds x images (2,000 replicates); `t`: t-interval "
                "of the per-seed differences. 'best': the baseline with the highest mean robust accuracy at that "
                "budget, picked on the same images (favours the baselines); 'per-seed best (oracle)': on each seed the "
                "baseline that scored highest on that seed's images — the max of several noisy estimates, an upper "
                "bound for the baselines (it turns a baseline that fails on some seeds into one that never does).\n",
                "| model | budget | method | baseline | diff pts | bootstrap 95 % | t 95 % | verdict |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r.model} | {r.budget} | {r.method} | {r.baseline} | {100 * r.diff:+.1f} | "
                f"[{100 * r.boot_lo:+.1f}, {100 * r.boot_hi:+.1f}] | [{100 * r.t_lo:+.1f}, {100 * r.t_hi:+.1f}] | "
                f"{r.verdict} |" for r in diffs.itertuples()]
    if len(f1):
        out += ["", "## F1: uniform widths, max-abs vs MSE-optimal clipping\n",
                "Drop = fp32 minus quantized, paired by seed [95 % t]; relative = drop / fp32.\n",
                "| model | eps | bits | clip | clean % | robust % | clean drop pts | robust drop pts "
                "| robust rel. drop % |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in f1.itertuples():
            out.append(f"| {r.model} | {r.eps:g} | {r.bits} | {r.clip} | {100 * r.clean:.1f} | {100 * r.robust:.1f} | "
                       f"{_pct(r.clean_drop, r.clean_drop_lo, r.clean_drop_hi)} | "
                       f"{_pct(r.robust_drop, r.robust_drop_lo, r.robust_drop_hi)} | "
                       f"{_pct(r.robust_rel, r.robust_rel_lo, r.robust_rel_hi)} |")
    if len(kurt) and len(kurt.columns) > 1:
        models = [c for c in kurt.columns if c != "layer"]
        out += ["", "## Weight kurtosis per layer (excess, mean over seeds) — the proposed F1 mechanism\n",
                "| layer | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        out += [f"| {r['layer']} | " + " | ".join(f"{r[m]:.2f}" for m in models) + " |" for _, r in kurt.iterrows()]
    if len(cost):
        out += ["", "## Search cost (median seconds over seeds x budgets, this machine)\n",
                "| method | median s | plans |", "|---|---|---|"]
        out += [f"| {r.method} | {r.median_s:.2f} | {r.n} |" for r in cost.itertuples()]
    return "\n".join(out) + "\n"


def compute_section(df: pd.DataFrame) -> str:
    """What the study cost: CPU core-hours and unit wall-hours summed over units, and the nodes they ran on
    (units finished before these columns existed are counted as unknown)."""
    known = df[df.cpu_s.notna()] if "cpu_s" in df else df.iloc[:0]
    lines = ["", "## Compute\n"]
    if known.empty:
        return "\n".join(lines + ["No unit recorded its CPU time (all finished before this was measured).", ""])
    nodes = sorted({str(n) for n in known.node if str(n)}) if "node" in known else []
    lines.append(f"{len(known)} of {len(df)} units recorded their cost: {known.cpu_s.sum() / 3600:.2f} CPU core-hours "
                 f"(each unit's process CPU time) in {known.unit_s.sum() / 3600:.2f} unit wall-hours, "
                 f"on {len(nodes)} node(s): {', '.join(nodes)}.")
    return "\n".join(lines + [""])


def plot(agg: pd.DataFrame, path: str) -> None:
    """Robust accuracy vs average-bit budget per method (t-interval bars), one panel per model kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = agg[agg.budget.str.startswith("bits")].copy()
    models = list(dict.fromkeys(bits.model)) or ["(none)"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        g = bits[bits.model == model]
        for method, h in g.groupby("method", sort=False):
            x = h.budget.str[4:].astype(float).to_numpy()
            order = np.argsort(x)
            m, lo, hi = (h[c].to_numpy(float)[order] for c in ("robust_mean", "robust_lo", "robust_hi"))
            err = np.where(np.isfinite(lo) & np.isfinite(hi), [m - lo, hi - m], 0.0)
            ax.errorbar(x[order], 100 * m, yerr=100 * err, marker="o", capsize=3, label=method,
                        lw=2.2 if method == "laaq" else 1.2)
        fp = agg[(agg.model == model) & (agg.method == "fp32")]
        if len(fp):
            ax.axhline(100 * fp.robust_mean.iloc[0], color="grey", ls="--", lw=1, label="fp32")
        ax.set_xlabel("budget: average weight bits")
        ax.set_ylabel("robust accuracy %")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def plot_pareto(agg: pd.DataFrame, path: str) -> None:
    """Robust accuracy vs what each plan costs on the target — its table latency as a fraction of int8's (BOPs
    where the run had no latency table) — one point per (budget, method), mean over seeds with t-interval bars,
    and each method's Pareto front (no cheaper plan of that method is more robust) as a line. One panel per
    model kind: where a method's front lies above another's at the same cost, it buys more robustness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f2 = agg[~agg.budget.isin(["fp32", "f1"])].copy()
    cost = "latency_frac" if "latency_frac" in f2 and f2.latency_frac.notna().any() else "bops_frac"
    f2 = f2[f2[cost].notna()]
    models = list(dict.fromkeys(f2.model)) or ["(none)"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for method, h in f2[f2.model == model].groupby("method", sort=False):
            h = h.sort_values(cost)
            x, m = h[cost].to_numpy(float), h.robust_mean.to_numpy(float)
            lo, hi = h.robust_lo.to_numpy(float), h.robust_hi.to_numpy(float)
            err = np.where(np.isfinite(lo) & np.isfinite(hi), [m - lo, hi - m], 0.0)
            line = ax.errorbar(x, 100 * m, yerr=100 * err, fmt="o", ms=4, capsize=2, alpha=0.6, label=method)
            front = np.maximum.accumulate(m)  # the most robust plan at or below each cost
            ax.step(x, 100 * front, where="post", color=line[0].get_color(), lw=2.2 if method == "laaq" else 1.0)
        fp = agg[(agg.model == model) & (agg.method == "fp32")]
        if len(fp):
            ax.axhline(100 * fp.robust_mean.iloc[0], color="grey", ls="--", lw=1, label="fp32")
        ax.set_xlabel("batch-1 latency / int8's (per-layer table)" if cost == "latency_frac"
                      else "bit operations / int8's")
        ax.set_ylabel("robust accuracy %")
        ax.set_title(f"{model}: robustness vs cost, every budget")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
