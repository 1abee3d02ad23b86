"""How the pipeline scales with the model: wall time and peak memory of every stage, latency, attack cost.

    .venv/bin/python benchmarks/scaling.py [--models vgg8,resnet20,resnet18,mobilenetv2] [--out results/scaling]

Why: every model measured before had < 140 k weights on 28×28 inputs; users deploy ResNet-18 and MobileNetV2 at
224×224. Each model runs the real ``laaq-bench bench`` (x86, variants int8 and LAAQ, ``quick`` attack on a few
images: the point is what each stage costs, not the accuracy) in its own process, into its own folder; this reads
back each run's ``run.json`` (``stages``: wall seconds, ``stages_peak_mib``: each stage's peak resident memory)
and ``metrics.csv`` (MACs, weights, latency), and prints one table. The attack cost is PGD-20's stage time over
(images attacked × 21 twin forward+backward passes). Data: VGG8 the embedded MNIST-5k; the others the tinted-digit
image folder of ``benchmarks/image_folder.py`` at 32×32 or 224×224 (400 train, 100 test images; one PGD-AT epoch
for the large models, so their accuracy means nothing). Names the CPU; one run's figures only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]  # model and data options of ``bench``
    size: int | None  # folder image size (None: built-in data)


COMMON = ("--target", "x86", "--variants", "int8,laaq", "--attack", "quick", "--quiet")  # bench's own timing protocol
CASES = {
    "vgg8": Case("VGG8 / MNIST 1×28×28", ("--arch", "vgg8", "--eval-samples", "100"), None),
    "resnet20": Case("ResNet-20 / 3×32×32", ("--arch", "resnet20", "--epochs", "2", "--eval-samples", "100"), 32),
    "resnet18": Case("ResNet-18 (full width) / 3×32×32",
                     ("--model", "examples/resnet18.py:resnet18_full", "--epochs", "1", "--eval-samples", "40"), 32),
    "mobilenetv2": Case("MobileNetV2-1.0 / 3×224×224",
                        ("--model", "examples/mobilenetv2.py:mobilenetv2_1_0", "--epochs", "1", "--eval-samples", "20"),
                        224),
}
SHOWN = ("training", "checkpoint (cached)", "calibration", "search", "lowering b1", "compile b1", "compile b64",
         "pgd-20", "square", "checks", "eps_curve", "timing")


def run_case(key: str, out: Path, folder: Path) -> Path:
    case = CASES[key]
    data = ("--dataset", f"folder@{case.size}:{folder}") if case.size else ()
    results = out / key
    cmd = [str(ROOT / ".venv/bin/laaq-bench"), "bench", *COMMON, *case.args, *data, "--results-dir", str(results)]
    t0 = time.perf_counter()
    log = out / f"{key}.log"
    with log.open("w") as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
    if r.returncode:
        raise SystemExit(f"{key}: bench failed (exit {r.returncode}); see {log}")
    print(f"{key}: {time.perf_counter() - t0:.0f} s ({' '.join(cmd[1:])})", flush=True)  # a resumed run: less
    (run,) = [p for p in results.iterdir() if (p / "run.json").exists()]
    return run


def summarize(key: str, run: Path) -> dict:
    info = json.loads((run / "run.json").read_text())
    stages, peaks = info["stages"], info.get("stages_peak_mib", {})
    df = pd.read_csv(run / "metrics.csv").set_index("variant")
    int8 = df.loc["int8"]
    row = {"model": CASES[key].name, "MMACs": int8.macs / 1e6, "weights (M)": int8.weight_bytes / 1e6,
           "run (s)": sum(sum(s.values()) for s in stages.values()),
           "peak (MiB)": max(v for s in peaks.values() for v in s.values()) if peaks else float("nan")}
    for stage in SHOWN:  # every row has every stage ("—" where it did not run: a cached checkpoint, no training)
        secs = [s[stage] for s in stages.values() if stage in s]
        row[f"{stage} (s)"] = round(sum(secs), 1) if secs else "—"
    for v in ("int8", "laaq"):
        row[f"{v} b1 (ms)"] = df.loc[v, "lat_small_median_ms"]
        row[f"{v} b64 (ms)"] = df.loc[v, "lat_large_median_ms"]
    scope = next(k for k in stages if k.endswith("/int8"))
    attacked = round(int8.clean_acc * int8.n_eval)
    row["PGD ms / image / step"] = round(1000 * stages[scope]["pgd-20"] / max(1, attacked) / 21, 2)
    row["peak by stage (MiB)"] = ", ".join(f"{k} {v:.0f}" for k, v in sorted(
        ((f"{sc.split('/')[-1]}:{st}", v) for sc, s in peaks.items() for st, v in s.items()),
        key=lambda kv: -kv[1])[:3])
    return row


def markdown(models: list[str], rows: list[dict]) -> str:
    """One column per model, one row per quantity (no tabulate dependency)."""
    def cell(v: object) -> str:
        if not isinstance(v, float):
            return str(v)
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"

    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "model"]
    lines = ["| | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(cell(r.get(k, "—")) for r in rows) + " |" for k in keys]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "scaling")
    ap.add_argument("--folder", type=Path, default=None, help="the image folder (default: OUT/digits-rgb, written "
                    "once); a model whose run is already in OUT/<model>/ resumes (bench skips measured variants)")
    a = ap.parse_args()
    from benchmarks.image_folder import write_folder
    from harness.environment import environment

    a.out.mkdir(parents=True, exist_ok=True)
    folder = (a.folder or a.out / "digits-rgb").resolve()
    if not (folder / "test").is_dir():
        write_folder(folder)
    rows = [summarize(k, run_case(k, a.out, folder)) for k in a.models.split(",")]
    env = environment()
    table = markdown([r["model"] for r in rows], rows)
    text = (f"# Scaling: every stage per model\n\n{env['host_cpu']}, {env['host_cores']} cores; `bench` x86, "
            f"int8 + LAAQ, `quick` attack; latency = bench's timing phase (3 interleaved rounds × 20 repeats, median, "
            f"batch 1 and 64, all cores); peak = "
            f"resident memory high-water mark per stage (run.json `stages_peak_mib`).\n\n"
            f"{table}\n")
    (a.out / "scaling.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
