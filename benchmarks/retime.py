"""Re-time a finished local run's artefacts, variants interleaved, in one process — ``bench``'s own timing phase.

    .venv/bin/python benchmarks/retime.py results/<run> [--rounds 5] [--repeat 20] [--number 10]

Why: to check a run's latencies later (on a quieter machine, with more rounds) with exactly the code that
produced them: this loads every ``artefacts/<target>-<variant>-b<batch>.so`` of the run (native x86 runs
only: it loads them into this process) and hands them to :func:`harness.timing.timing_phase`, the function
``bench``'s timing phase calls (interleaved rounds, order rotated, a quiet window with the host's load
sampled before each slot, warm-up, ``time_evaluator`` repeats x calls). It prints per (variant, batch) the
median of the round medians, the spread, the others' CPU share and each variant's ratio to int8 — and
writes ``retimed.csv`` into the run folder (atomically); ``metrics.csv`` is left as measured.
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
    from harness.measure import LatencyProtocol
    from harness.results import atomic_write_text
    from harness.timing import describe, timing_phase

    run = Path(a.run)
    info = json.loads((run / "run.json").read_text())
    arts = sorted((run / "artefacts").glob("*.so"))
    if not arts:
        print(f"no artefacts in {run}/artefacts (deleted after the run?)", file=sys.stderr)
        return 2
    shape = {"mnist5k": (1, 28, 28), "digits": (1, 8, 8), "cifar10": (3, 32, 32)}[info["config"]["dataset"]]
    threads = int(os.environ.get("TVM_NUM_THREADS", len(os.sched_getaffinity(0))))
    session = LocalSession(threads, sensor=False)
    proto = LatencyProtocol(warmup=a.warmup, number=a.number, repeat=a.repeat, rounds=a.rounds)
    slots = {}
    rng = np.random.default_rng(0)
    for p in arts:
        m = re.match(r"(.+)-([^-]+)-b(\d+)\.so$", p.name)
        if not m:
            continue
        variant, batch = m.group(2), int(m.group(3))
        x = (rng.random((batch, *shape)).astype(np.float32) if variant.startswith("fp")
             else rng.integers(0, 256, (batch, *shape), dtype=np.uint8))
        slots[(variant, batch)] = (session.load(p), x)
    timed = timing_phase(slots, proto, session.system, local=True)
    rows = []
    for (variant, batch), t in timed.items():
        rows.append({"variant": variant, "batch": batch, "median_ms": float(np.median(t.round_medians_ms)),
                     "min_ms": min(t.round_medians_ms), "max_ms": max(t.round_medians_ms), "rounds": a.rounds,
                     "spread_pct": t.spread_pct, "other_cpu_frac": t.other_cpu_frac, "busy": t.busy,
                     "threads": threads, "protocol": describe(proto)})
    df = pd.DataFrame(rows).sort_values(["batch", "variant"])
    base = df[df.variant == "int8"].set_index("batch").median_ms
    df["vs_int8"] = [r.median_ms / base.get(r.batch, np.nan) for r in df.itertuples()]
    print(f"{run.name}: {threads} threads; {describe(proto)}")
    print(df[["variant", "batch", "median_ms", "min_ms", "max_ms", "other_cpu_frac", "busy", "vs_int8"]]
          .to_string(index=False))
    atomic_write_text(run / "retimed.csv", df.to_csv(index=False))
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder of a native local target (artefacts/ still present)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=20, help="repeats per slot per round")
    ap.add_argument("--number", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    sys.exit(main(ap.parse_args()))
