"""How much the experiment's cheap attack (``apgd``) overstates robustness: re-attack finished grid plans
with a stronger preset on the same images and compare per image.

    .venv/bin/python benchmarks/attack_gap.py results/reference/experiment --seed 0 --budget bits2.5 \\
        --methods uniform-clip,mse,hessian,laaq [--attack standard] [--n-eval 100] [--cache-dir D]

Why: the grid evaluates ~250 plans, so it uses ``apgd`` (APGD-CE 50 + APGD-T 50 × top-3, ~6× cheaper than
``standard``). A method comparison is only as good as the attack is for *every* method: if the stronger
ensemble took more points from one method's plan than from another's, the ranking would be the cheap
attack's artefact. This rebuilds the seed's model, calibration and plans' bit-exact twins exactly as
the experiment did (same configuration digest, same cached checkpoint), attacks each stored plan with
``--attack`` on the same test images and seed, and prints, per plan, robust accuracy under both, the
difference, and the images each attack alone broke. Writes ``attack_gap.csv`` into the folder (atomically).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def reattack(ctx, strong, plan_json: str, node: str = ""):
    """One stored plan's twin (or the float model) attacked with the strong preset: its per-image outcome
    and seconds. Writes nothing, so an executor may run it anywhere (``node``: where it ran)."""
    from laaq.experiment.run import twin_for
    from laaq.quant.plan import QuantPlan
    from laaq.robustness import evaluate

    t0 = time.perf_counter()
    predict = ctx.model if not plan_json else twin_for(ctx.graph, QuantPlan.from_json(plan_json), ctx.calib)
    return evaluate(predict, ctx.x, ctx.y, strong).robust.astype(bool), round(time.perf_counter() - t0, 1), node


def _tagged(method: str, *args, node: str = ""):
    return method, reattack(*args, node=node)


def main(a: argparse.Namespace) -> int:
    import pandas as pd

    from harness.results import atomic_write_text
    from laaq.data import load_dataset
    from laaq.experiment import ExperimentConfig, _store
    from laaq.experiment.executor import make_executor
    from laaq.experiment.run import context
    from laaq.experiment.store import unit_key
    from laaq.robustness import get_preset
    from laaq.stats import wilson

    cfg = replace(ExperimentConfig.quick() if a.quick else ExperimentConfig(), n_eval=a.n_eval)
    store = _store(cfg, Path(a.folder))  # refuses a folder of another configuration
    data = load_dataset(cfg.dataset, seed=0, data_dir=cfg.data_dir)
    ctx = context(data, cfg, a.seed, "pgd-at", False, Path(a.cache_dir) if a.cache_dir else None, store)
    strong = replace(cfg.evaluation, preset=get_preset(a.attack), eps=ctx.eps, seed=a.seed)
    rows, units = [], {}
    executor = make_executor(a.executor, a.address, a.workers)
    try:
        for method in ["fp32", *a.methods.split(",")]:
            key = unit_key("pgd-at", a.seed, "fp32" if method == "fp32" else a.budget, method)
            if not store.has(key):
                print(f"skip {key}: not in {a.folder}")
                continue
            units[method] = store.get(key)
            executor.submit(_tagged, method, ctx, strong, units[method].plan)
        while executor.pending():
            method, (hard, seconds, node) = executor.next_done()
            cheap = units[method].robust.astype(bool)
            lo, hi = wilson(int(hard.sum()), hard.size)
            rows.append({"seed": a.seed, "budget": a.budget, "method": method, "n": hard.size,
                         "grid_attack": cfg.evaluation.preset.name, "strong_attack": a.attack,
                         "robust_grid": cheap.mean(), "robust_strong": hard.mean(), "strong_lo": lo, "strong_hi": hi,
                         "gap_pts": 100 * (cheap.mean() - hard.mean()), "only_strong_broke": int((cheap & ~hard).sum()),
                         "only_grid_broke": int((~cheap & hard).sum()), "seconds": seconds, "node": node})
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                  flush=True)
    finally:
        executor.close()
    if not rows:
        return 1
    order = {m: i for i, m in enumerate(units)}  # the order asked for, whatever order they finished in
    df = pd.DataFrame(sorted(rows, key=lambda r: order[r["method"]]))
    out = Path(a.folder) / "attack_gap.csv"
    old = pd.read_csv(out) if out.exists() else pd.DataFrame()
    if len(old):
        old = old[~((old.seed == a.seed) & (old.budget == a.budget) & old.method.isin(df.method))]
    atomic_write_text(out, pd.concat([old, df]).to_csv(index=False))
    print(f"gap ({cfg.evaluation.preset.name} - {a.attack}) in robust points: mean {df.gap_pts.mean():.1f}, range "
          f"[{df.gap_pts.min():.1f}, {df.gap_pts.max():.1f}] over {len(df)} plans; wrote {out}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="an experiment folder (its units/ hold the plans and apgd outcomes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", default="bits2.5")
    p.add_argument("--methods", default="uniform-clip,mse,hessian,random-best,laaq")
    p.add_argument("--attack", default="standard")
    p.add_argument("--n-eval", type=int, default=100, help="the experiment's --n-eval (part of its digest)")
    p.add_argument("--quick", action="store_true", help="the experiment was run with --quick")
    p.add_argument("--cache-dir", default=None, help="checkpoint cache of the experiment (default: LAAQ_CACHE)")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="who re-attacks the plans: this process in order, or Ray tasks (one CPU each)")
    p.add_argument("--address", default=None, help="Ray cluster HOST:PORT (default: a local Ray)")
    p.add_argument("--workers", type=int, default=0, help="Ray: plans in flight at most (0: the cluster's CPUs)")
    sys.exit(main(p.parse_args()))
