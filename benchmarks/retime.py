"""Re-time a finished local run's artefacts on a quiet machine, variants interleaved, in one process.

    .venv/bin/python benchmarks/retime.py results/<run> [--rounds 5] [--repeat 20] [--number 10]

Why: ``bench`` times each variant right after its attack, so a row's latency is as good as the machine's
state at that moment — a run made while other jobs shared the cores has latencies that say more about
the load than about the model. This loads every ``artefacts/<target>-<variant>-b<batch>.so`` of the run
(native x86 runs only: it loads them into this process), and for ``--rounds`` rounds times each (variant,
batch) in turn with ``bench``'s own protocol (:func:`harness.measure.latency`: 300 ms settle pause, warm-up,
``time_evaluator`` repeats x calls), so every variant sees the same machine state. It prints the median
over rounds of each round's median, the spread, and each variant's ratio to int8 — and writes
``retimed.csv`` into the run folder (atomically); ``metrics.csv`` is left as measured.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(a: argparse.Namespace) -> int:
    import json
    import os

    from harness.devices.local import LocalSession
    from harness.measure import LatencyProtocol, latency
    from harness.results import atomic_write_text

    run = Path(a.run)
    info = json.loads((run / "run.json").read_text())
    arts = sorted((run / "artefacts").glob("*.so"))
    if not arts:
        print(f"no artefacts in {run}/artefacts (deleted after the run?)", file=sys.stderr)
        return 2
    shape = {"mnist5k": (1, 28, 28), "digits": (1, 8, 8), "cifar10": (3, 32, 32)}[info["config"]["dataset"]]
    threads = int(os.environ.get("TVM_NUM_THREADS", len(os.sched_getaffinity(0))))
    session = LocalSession(threads, sensor=False)
    proto = LatencyProtocol(warmup=a.warmup, number=a.number, repeat=a.repeat)
    mods = {}
    rng = np.random.default_rng(0)
    for p in arts:
        m = re.match(r"(.+)-([^-]+)-b(\d+)\.so$", p.name)
        if not m:
            continue
        variant, batch = m.group(2), int(m.group(3))
        x = (rng.random((batch, *shape)).astype(np.float32) if variant.startswith("fp")
             else rng.integers(0, 256, (batch, *shape), dtype=np.uint8))
        mods[(variant, batch)] = (session.load(p), x)
    times: dict[tuple[str, int], list[float]] = {k: [] for k in mods}
    for _ in range(a.rounds):
        for k, (mod, x) in mods.items():
            times[k].append(latency(mod, x, proto).median_ms)
    rows = []
    for (variant, batch), t in times.items():
        rows.append({"variant": variant, "batch": batch, "median_ms": float(np.median(t)), "min_ms": min(t),
                     "max_ms": max(t), "rounds": len(t), "threads": threads, "protocol": proto.describe()})
    df = pd.DataFrame(rows).sort_values(["batch", "variant"])
    base = df[df.variant == "int8"].set_index("batch").median_ms
    df["vs_int8"] = [r.median_ms / base.get(r.batch, np.nan) for r in df.itertuples()]
    print(f"{run.name}: {a.rounds} interleaved rounds, {threads} threads; {proto.describe()}")
    print(df[["variant", "batch", "median_ms", "min_ms", "max_ms", "vs_int8"]].to_string(index=False))
    atomic_write_text(run / "retimed.csv", df.to_csv(index=False))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder of a native local target (artefacts/ still present)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--number", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    sys.exit(main(ap.parse_args()))
