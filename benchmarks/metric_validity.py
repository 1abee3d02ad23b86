"""Does each metric predict damage? Spearman ρ of every cost metric vs the measured robust-accuracy drop.

Usage::

    python benchmarks/metric_validity.py --arch vgg8 [--plans 60] [--eval 200] [--out results/metric-validity]
    python benchmarks/metric_validity.py --quick          # digits + tiny CNN, a smoke run (seconds)

Resumable: rerun the same command after an interruption and it continues from ``plans.csv`` (rows are
written atomically after every plan). The protocol is in :mod:`laaq.metric_validity` and docs/method.md.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from laaq.attacks import PGDConfig
from laaq.data import load_dataset
from laaq.metric_validity import METRICS, RECIPES, ValidityConfig, run
from laaq.search import CalibrationRecipe
from laaq.train import TrainConfig


def quick_config() -> ValidityConfig:
    return ValidityConfig(dataset="digits", n_val=200, n_eval=60, n_plans=6, bits_range=(2.5, 6.0), eps=0.1,
                          apgd_steps=10, clips=(1.0, 0.8, 0.6),
                          train=TrainConfig(arch="tinycnn", epochs=3, lr=5e-3,
                                            pgd=PGDConfig(eps=0.1, step_size=0.03, steps=3)),
                          calibration=CalibrationRecipe(samples=48, attack_steps=4), hessian_max_iter=5,
                          bootstrap=200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg8", choices=sorted(RECIPES))
    ap.add_argument("--plans", type=int, default=60)
    ap.add_argument("--eval", type=int, default=200, help="validation images attacked per plan")
    ap.add_argument("--steps", type=int, default=50, help="APGD-CE steps")
    ap.add_argument("--metrics", default=",".join(METRICS))
    ap.add_argument("--max-new", type=int, default=None, help="measure at most this many new plans, then stop")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--out", default="results/metric-validity")
    ap.add_argument("--quick", action="store_true", help="digits + tiny CNN smoke run")
    ap.add_argument("--executor", default="local", choices=["local", "ray"],
                    help="who attacks the plans: this process in order, or Ray tasks (one CPU each)")
    ap.add_argument("--address", default=None, help="Ray cluster HOST:PORT (default: a local Ray)")
    ap.add_argument("--workers", type=int, default=0, help="Ray: plans in flight at most (0: the cluster's CPUs)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.quick:
        cfg = quick_config()
    else:
        cfg = ValidityConfig(train=RECIPES[a.arch], n_plans=a.plans, n_eval=a.eval, apgd_steps=a.steps,
                             metrics=tuple(a.metrics.split(",")))
    cfg = replace(cfg, n_plans=a.plans if not a.quick else cfg.n_plans)
    data = load_dataset(cfg.dataset, seed=0)
    print(cfg.describe(), flush=True)
    from laaq.experiment.executor import make_executor

    df, corr = run(data, cfg, a.out, log=lambda m: print(m, flush=True), max_plans=a.max_new,
                   executor=make_executor(a.executor, a.address, a.workers))
    if len(corr):
        print(corr.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))


if __name__ == "__main__":
    main()
