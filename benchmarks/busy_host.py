"""The timing phase under a CPU hog: are the rows flagged, and does the ratio between variants hold?

    .venv/bin/python benchmarks/busy_host.py [--variants fp32,int8] [--out /tmp/busy-host]

Why: issue 28 — a row timed on a busy host was 100-2,000x wrong and nothing said so. This runs the same small
``bench`` (sklearn digits, tinycnn, ``quick`` attack, 2 variants) twice in fresh run folders: once on the
machine as it is, once with one busy-loop process per core running for the whole run. It prints, side by
side, each variant's batch-1 and large-batch medians, the ratio between the two variants, the rows'
``other_cpu_frac`` and whether they were flagged (``busy_host``). Read the ratios, not the absolute figures:
under the hog every figure is slower, but variants timed interleaved in one phase see the same machine, so
their ratio should stay close to the quiet run's. A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
HOG = "import time\nend = time.time() + 1800\nwhile time.time() < end:\n    pass\n"


def run(out: Path, variants: str) -> pd.DataFrame:
    cmd = [sys.executable, "-m", "harness.cli", "bench", "--target", "x86", "--dataset", "digits", "--arch", "tinycnn",
           "--epochs", "3", "--eps", "0.1", "--attack", "quick", "--eval-samples", "100", "--variants", variants,
           "--results-dir", str(out), "--quiet"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    (metrics,) = out.glob("*/metrics.csv")
    return pd.read_csv(metrics, keep_default_na=False).set_index("variant")


def main(a: argparse.Namespace) -> int:
    out = Path(a.out or tempfile.mkdtemp(prefix="busy-host-"))
    names = [v.strip() for v in a.variants.split(",")]
    quiet = run(out / "quiet", a.variants)
    procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(len(os.sched_getaffinity(0)))]
    try:
        busy = run(out / "hog", a.variants)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    print(f"host: {cpu}, {os.cpu_count()} cores; {len(procs)} busy loops in the second run")
    rows = []
    for label, df in (("quiet", quiet), ("hog", busy)):
        for v in names:
            r = df.loc[v]
            rows.append({"run": label, "variant": v, "b1_ms": r.lat_small_median_ms, "bL_ms": r.lat_large_median_ms,
                         "other_cpu_frac": r.other_cpu_frac, "flagged": bool(str(r.busy_host).strip())})
        a0, b0 = names[0], names[1]
        rows.append({"run": label, "variant": f"{b0}/{a0}",
                     "b1_ms": df.loc[b0].lat_small_median_ms / df.loc[a0].lat_small_median_ms,
                     "bL_ms": df.loc[b0].lat_large_median_ms / df.loc[a0].lat_large_median_ms})
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"run folders: {out}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="fp32,int8")
    ap.add_argument("--out", default="")
    sys.exit(main(ap.parse_args()))
