"""The experiment grid on Ray vs in-process: wall time of the same units, side by side, and their equality.

    .venv/bin/python benchmarks/experiment_executors.py [--workers 2] [--n-eval 50] [--seeds 0,1]

Why: ``experiment`` runs its units as Ray tasks by default (``laaq/experiment/executor.py``). This runs one
grid (PGD-AT VGG8, budget 3 bits, no BOPs budget, no F1, methods mse, hessian, random-best, laaq, plus fp32:
5 units a seed, tens of seconds each) twice into fresh folders — ``--executor local``, then Ray with
``--workers`` — after one untimed pass that trains and caches the models, so neither timing includes
training. Prints both wall times, their ratio, the summed unit CPU time, the nodes, and whether every unit's
plan and per-image outcomes are identical. Names the CPU; compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-eval", type=int, default=50)
    ap.add_argument("--seeds", default="0,1")
    a = ap.parse_args()
    from harness.environment import environment
    from laaq.experiment import ExperimentConfig, make_executor, run_experiment
    from laaq.experiment.store import unit_contents

    cfg = replace(ExperimentConfig(), models=("pgd-at",), seeds=tuple(int(s) for s in a.seeds.split(",")),
                  budgets=(3.0,), bops_fractions=(), f1_bits=(), n_eval=a.n_eval,
                  methods=("mse", "hessian", "random-best", "laaq"))
    with tempfile.TemporaryDirectory() as tmp:
        warm = replace(cfg, methods=("mse",))  # trains/loads every seed's model once, untimed
        run_experiment(warm, Path(tmp) / "warm", progress=False, executor=make_executor("local"))
        times = {}
        for name in ("local", "ray"):
            out = Path(tmp) / name
            t0 = time.perf_counter()
            ex = make_executor(name, workers=a.workers if name == "ray" else 0)
            run_experiment(cfg, out, progress=False, executor=ex)
            times[name] = time.perf_counter() - t0
        same = unit_contents(Path(tmp) / "local") == unit_contents(Path(tmp) / "ray")
        rows = [json.loads(p.read_text())["row"] for p in (Path(tmp) / "ray" / "units").glob("*.json")]
        cpu = sum(r.get("cpu_s", 0) for r in rows)
        nodes = sorted({r.get("node", "") for r in rows})
        n = len(rows)
    env = environment()
    print(f"# {env['host_cpu']}, {env['host_cores']} cores; {n} units (n_eval {a.n_eval}, seeds {a.seeds}); "
          "models cached before timing; Ray time includes starting the local Ray")
    print(f"local executor : {times['local']:7.1f} s")
    print(f"ray, {a.workers} workers: {times['ray']:7.1f} s   ratio ray/local {times['ray'] / times['local']:.2f}")
    print(f"unit CPU time on Ray: {cpu:.0f} s; nodes: {', '.join(nodes)}; units identical (plans, outcomes): {same}")


if __name__ == "__main__":
    main()
