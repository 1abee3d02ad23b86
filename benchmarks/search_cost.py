"""Search cost: LAAQ vs the HAWQ-V3 Hessian-trace baseline on the same model, in one run.

Usage: ``python benchmarks/search_cost.py [--quick] [--repeats 3]``. Times are wall-clock on this
machine; LAAQ's time includes crafting its adversarial calibration inputs (the Hessian baseline
needs none). A warm-up search runs first so that one-time imports are not billed to either method.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from laaq.data import load_dataset
from laaq.experiment import ExperimentConfig
from laaq.importer import model_graph
from laaq.search import Budget, SearchConfig, search_plan
from laaq.train import TrainConfig, train_or_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="digits + tiny CNN instead of MNIST-5k + VGG8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-refine", action="store_true", help="time LAAQ without the refinement step")
    args = ap.parse_args()
    cfg = ExperimentConfig.quick() if args.quick else ExperimentConfig()
    data = load_dataset(cfg.dataset, seed=0, data_dir=cfg.data_dir)
    tcfg = TrainConfig(arch=cfg.arch, epochs=cfg.train_epochs, lr=cfg.train_lr, adversarial=True, pgd=cfg.train_pgd,
                       seed=0)
    model, _, _ = train_or_load(data, tcfg)
    graph = model_graph(model, data.input_shape)
    budget = Budget(avg_bits=cfg.budgets[-1])
    scfg = replace(SearchConfig(), refine=not args.no_refine)
    def make_calib():
        return cfg.calibration.make(graph, data.x_train, data.y_train, cfg.evaluation.eps, 0, model)

    calib = make_calib()
    search_plan("laaq", graph, calib, budget, replace(scfg, refine=False))  # warm-up (imports, allocator)
    times: dict[str, list[float]] = {"laaq": [], "hessian": []}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        c = make_calib()
        search_plan("laaq", graph, c, budget, replace(scfg, seed=r))
        times["laaq"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        search_plan("hessian", graph, calib, budget, replace(scfg, seed=r))
        times["hessian"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {cfg.dataset}/{cfg.arch} (PGD-AT), {len(calib.x)} calibration images, budget {budget.describe()}")
    for k, v in times.items():
        print(f"  {k:8s} median {med[k]:7.2f} s  runs {[round(t, 2) for t in v]}")
    print(f"LAAQ / Hessian time ratio: {med['laaq'] / med['hessian']:.3f} (target <= 0.2)")


if __name__ == "__main__":
    main()
