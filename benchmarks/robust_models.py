"""How robust is each MNIST model's PGD-AT recipe? Training time, clean and robust accuracy, weight shares.

Usage::

    python benchmarks/robust_models.py [--models vgg8,smallcnn] [--n 500] [--out results/robust-models]

Each model is trained (or loaded from the checkpoint cache) with its recipe — the same checkpoint as
``laaq-bench bench --arch A --epochs E --lr LR`` — and evaluated in fp32 with the ``standard`` ensemble
(PGD-20, APGD-CE 100, APGD-T 100 x 9 targets, Square 2,000 queries; per-image worst case; no sanity checks)
at eps = 0.3 on the first ``--n`` test images, with Wilson 95 % intervals. Training time is wall-clock of
this process (``--threads`` torch threads), only when the checkpoint was not cached.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from laaq.data import load_dataset
from laaq.metric_validity import RECIPES
from laaq.robustness import PRESETS, EvalConfig, curve_radii, evaluate
from laaq.train import train_or_load

FLAGS = {"vgg8": "--arch vgg8 --epochs 6 --lr 3e-3", "smallcnn": "(CLI defaults: --epochs 6 --lr 1e-3)",
         "smallcnn-exp": "(the experiment's recipe: 5 epochs, lr 3e-3, PGD-10 step 0.05)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg8,smallcnn")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--curve", type=int, default=0, help="also the eps-curve on the first N test images (the "
                    "ensemble's own curve budget: APGD-CE 25 + APGD-T 25 x 3 targets; must fall to ~0 at eps 0.5)")
    ap.add_argument("--skip-main", action="store_true", help="only the eps-curve")
    ap.add_argument("--out", default="results/robust-models")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset("mnist5k", seed=0)
    x, y = data.x_test[: a.n], data.y_test[: a.n]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.models.split(","):
        cfg, flags = RECIPES[name], FLAGS[name]
        t0 = time.perf_counter()
        model, path, cached = train_or_load(data, cfg, progress=False)
        train_s = None if cached else round(time.perf_counter() - t0, 1)
        graph = model.to_graph()
        sizes = {n.name: int(n.weight.size) for n in graph.weighted()}
        total = sum(sizes.values())
        if a.curve:
            light = replace(PRESETS["standard"], name="curve", pgd_steps=0, apgd_ce_steps=25, apgd_t_steps=25,
                            apgd_t_targets=3, square_queries=0)
            curve = []
            for r_eps in curve_radii(0.3, light.curve_factors):
                rc = evaluate(model, x[: a.curve], y[: a.curve], EvalConfig(light, r_eps, seed=3, checks=False))
                curve.append((r_eps, rc.robust_acc))
                print(f"  eps {r_eps:g}: robust {rc.robust_acc:.3f} (n={rc.n})", flush=True)
            (out / f"{name}-curve.json").write_text(json.dumps({"n": a.curve, "curve": curve}))
        if a.skip_main:
            continue
        t1 = time.perf_counter()
        r = evaluate(model, x, y, EvalConfig(PRESETS["standard"], 0.3, seed=0, checks=False),
                     log=lambda m: print(m, flush=True))
        row = {"model": name, "flags": flags, "checkpoint": path.name, "train_s": train_s,
               "clean": r.clean_acc, "clean_ci": r.interval("clean"), "robust": r.robust_acc,
               "robust_ci": r.interval("robust"), "members": r.members_str(), "n": r.n,
               "eval_s": round(time.perf_counter() - t1, 1), "weights": total,
               "shares": {k: round(v / total, 4) for k, v in sizes.items()}}
        print(json.dumps(row), flush=True)
        (out / f"{name}.json").write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
