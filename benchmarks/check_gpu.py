#!/usr/bin/env python
"""The whole CUDA check in one short go, on a machine with an NVIDIA GPU; prints a table.

    .venv/bin/python benchmarks/check_gpu.py                 # auto-picks the target for this GPU
    .venv/bin/python benchmarks/check_gpu.py --target cuda-sm90 --out results/check-gpu

For every (model, variant) — models: tiny (8x8), smallcnn (28x28), resnet20 (32x32), randomly
initialised with non-trivial batch-norm statistics; variants: fp32, fp16, int8 (uniform 8-bit),
mixed (2..8-bit per layer, integer kernels):

1. compile for the target at batch 1 and ``--batch-large`` (dlight schedules, nvcc device code),
   export and verify the library (``harness.backend.cuda``);
2. load it on ``tvm.cuda(0)`` and run ``--n-check`` random inputs through it;
3. compare with the host reference — integer variants against ``laaq.quant.integer.run_integer``,
   **bit-exact** required; float variants against the PyTorch model on the CPU, within
   ``|Δ| ≤ 1e-4·max(1, max|ref|)`` (fp32) and ``|Δ| ≤ 2e-2·max(1, max|ref|)`` (fp16);
4. latency with ``time_evaluator`` on the GPU at both batch sizes;
5. energy per sample at the large batch from NVML (energy counter, else sampled board power)
   over a window of ``--energy-window-s`` — empty when NVML is absent, never estimated.

Then (``--bench``, on by default when a GPU is present) the real ``laaq-bench bench`` on a tiny
trained model (digits, tinycnn) for fp32/fp16/int8/int4, so the per-hardware report gets measured
CUDA rows with clean and PGD accuracy from the GPU's outputs.

Robust by design: a failing variant is reported and the rest continue; a wall-clock budget
(``--budget-s``, default 270 s) stops starting new work and lists what was skipped. Sized to finish
in under 5 minutes on an H100/H200 host. Without a GPU it compiles and verifies only and says so;
exit code 2 unless ``--allow-no-gpu``. Exit 1 when any check failed, 0 when all passed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

T0 = time.monotonic()
FP32_RTOL = 1e-4
FP16_RTOL = 2e-2
MODELS = ("tiny", "smallcnn", "resnet20")
VARIANTS = ("fp32", "fp16", "int8", "mixed")


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


@dataclass
class Result:
    model: str
    variant: str
    status: str = "pending"  # ok | FAIL | error | not run | skipped
    check: str = ""  # bit-exact / within tolerance / ...
    max_abs_diff: float | None = None
    exact_rows: float | None = None
    agreement: float | None = None
    compile_s: float = 0.0
    device_code: str = ""
    lat_b1_ms: float | None = None
    lat_large_ms: float | None = None
    thr_large_ips: float | None = None
    energy_uj_per_sample: float | str = ""
    energy_method: str = ""
    mean_power_w: float | None = None
    error: str = ""
    extra: dict = field(default_factory=dict)


def build_model(name: str):
    import torch

    from laaq.models import ResNet20, build_model, randomize_bn_stats, tiny_cnn

    torch.manual_seed({"tiny": 0, "smallcnn": 1, "resnet20": 2}[name])
    if name == "tiny":
        model, shape = tiny_cnn(), (1, 8, 8)
    elif name == "smallcnn":
        model, shape = build_model("smallcnn", (1, 28, 28), 10), (1, 28, 28)
    else:
        model, shape = ResNet20(image=32), (3, 32, 32)
    randomize_bn_stats(model)  # non-trivial BN: folding matters
    return model.eval(), shape


def quantized(model, shape, variant: str):
    import torch

    from laaq.importer import model_graph
    from laaq.quant.plan import LayerSetting, QuantPlan
    from laaq.quant.quantizers import quantize_graph

    graph = model_graph(model, shape)
    names = [n.name for n in graph.weighted()]
    if variant == "int8":
        plan = QuantPlan.uniform(names, 8)
    else:
        bits = [2, 3, 4, 5, 6, 8]
        plan = QuantPlan({n: LayerSetting(bits[i % 6], 1.0 - 0.1 * (i % 4)) for i, n in enumerate(names)})
    return quantize_graph(graph, plan, torch.rand(64, *shape, generator=torch.Generator().manual_seed(7)))


def check_one(name: str, variant: str, model, shape, target, session, args, out: Path) -> Result:
    from harness.backend.cuda_library import describe_manifest, read_manifest

    r = Result(name, variant)
    big = args.batch_large
    is_int = variant in ("int8", "mixed")
    qg = quantized(model, shape, variant) if is_int else None
    arts = _compile_both(name, variant, model, shape, qg, target, big, out)
    r.compile_s = round(sum(a.compile_s for a in arts.values()), 2)
    r.device_code = describe_manifest(read_manifest(arts[big].path))
    if not session.available:
        r.status, r.check = "not run", "compiled, exported, verified; no CUDA device"
        return r
    return _run_and_compare(r, arts, is_int, qg, model, shape, variant, session, args)


def _compile_both(name, variant, model, shape, qg, target, big, out):
    from harness.compile import compile_module
    from harness.lower import lower_float, lower_float16, lower_integer

    arts = {}
    for b in (1, big):
        if variant in ("fp32", "fp32-jit"):
            mod = lower_float(model, shape, b)
        elif variant == "fp16":
            mod = lower_float16(model, shape, b)
        else:
            mod = lower_integer(qg, b)
        arts[b] = compile_module(mod, target, out / "artefacts" / f"{target.name}-{name}-{variant}-b{b}.so", variant, b)
    return arts


def _run_and_compare(r, arts, is_int, qg, model, shape, variant, session, args):
    import numpy as np
    import torch

    from harness.measure import LatencyProtocol, latency, outputs
    from harness.sensors import measured_energy_uj
    from laaq.quant.integer import run_integer
    from laaq.quant.quantizers import quantize_input

    big = args.batch_large
    loaded = {b: session.load(a.path) for b, a in arts.items()}
    x = torch.rand(args.n_check, *shape, generator=torch.Generator().manual_seed(11))
    if is_int:
        xin = quantize_input(x).numpy()
        ref = run_integer(qg, xin)
        dev = outputs(loaded[big], xin, big)
        dev1 = outputs(loaded[1], xin[:4], 1)
        r.exact_rows = float(np.all(dev == ref, axis=1).mean())
        r.max_abs_diff = float(np.abs(dev.astype(np.int64) - ref).max())
        r.agreement = float((dev.argmax(1) == ref.argmax(1)).mean())
        ok = np.array_equal(dev, ref) and np.array_equal(dev1, ref[:4])
        r.check = f"bit-exact vs integer reference (b1 and b{big})" if ok else \
            f"NOT bit-exact: {1 - r.exact_rows:.2%} of rows differ, max |Δ| {r.max_abs_diff:g}"
    else:
        xin = x.numpy()
        with torch.no_grad():
            ref = model(x).numpy()
        dev = outputs(loaded[big], xin, big)
        dev1 = outputs(loaded[1], xin[:4], 1)
        rtol = FP16_RTOL if variant == "fp16" else FP32_RTOL
        tol = rtol * max(1.0, float(np.abs(ref).max()))
        r.max_abs_diff = float(max(np.abs(dev - ref).max(), np.abs(dev1 - ref[:4]).max()))
        r.exact_rows = float(np.all(dev == ref, axis=1).mean())
        r.agreement = float((dev.argmax(1) == ref.argmax(1)).mean())
        ok = bool(np.isfinite(dev).all()) and r.max_abs_diff <= tol
        r.check = f"{'within' if ok else 'OUTSIDE'} |Δ| ≤ {tol:.3g} vs PyTorch fp32 on CPU"
    proto = LatencyProtocol(warmup=args.warmup, number=args.number, repeat=args.repeat)
    xb = {b: xin[:b] if b <= len(xin) else np.repeat(xin[:1], b, axis=0) for b in (1, big)}
    lat1, latb = latency(loaded[1], xb[1], proto), latency(loaded[big], xb[big], proto)
    r.lat_b1_ms, r.lat_large_ms = round(lat1.median_ms, 4), round(latb.median_ms, 4)
    r.thr_large_ips = round(latb.throughput, 1)
    if args.energy_window_s > 0:
        r.energy_uj_per_sample = measured_energy_uj(session, loaded[big], xb[big], latb.median_ms,
                                                    min_window_s=args.energy_window_s)
        sensor = getattr(session, "sensor", None)
        if sensor is not None and sensor.last.joules is not None:
            r.energy_method = sensor.last.method
            r.mean_power_w = round(sensor.last.mean_w, 1) if sensor.last.mean_w else None
            r.extra["energy_window_s"] = round(sensor.last.seconds, 3)
            r.extra["power_samples"] = sensor.last.samples
    r.status = "ok" if ok else "FAIL"
    return r


def choose_target(name: str, session):
    """``auto``: the shipped target whose arch is this GPU's (cuda-sm90 for 9.0, cuda for 8.9), else
    ``cuda`` with its arch replaced by the GPU's own (so SASS matches exactly)."""
    from harness.targets import load_target

    if name != "auto":
        return load_target(name)
    if not session.available:
        return load_target("cuda")
    cc = str(session.dev.compute_version).replace(".", "")
    for cand in ("cuda-sm90", "cuda"):
        t = load_target(cand)
        if t.tvm.get("arch") == f"sm_{cc}":
            return t
    t = load_target("cuda")
    return replace(t, tvm={**t.tvm, "arch": f"sm_{cc}"}, description=f"{t.description} (arch set to this GPU: sm_{cc})")


def fmt(v, nd: int = 3) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def print_table(results: list[Result]) -> None:
    cols = [("model", "model"), ("variant", "variant"), ("status", "status"), ("compile_s", "compile s"),
            ("max_abs_diff", "max|Δ|"), ("exact_rows", "exact"), ("agreement", "argmax"),
            ("lat_b1_ms", "b1 ms"), ("lat_large_ms", "bN ms"), ("thr_large_ips", "img/s"),
            ("energy_uj_per_sample", "µJ/img"), ("mean_power_w", "W"), ("check", "check")]
    rows = [[fmt(getattr(r, k)) for k, _ in cols] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, (_, h) in enumerate(cols)]
    print("\n" + "  ".join(h.ljust(w) for (_, h), w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    for r in results:
        if r.error:
            print(f"  {r.model}/{r.variant}: {r.error}")


def environment(session, target) -> dict:
    import tvm

    from harness.backend.cuda import ensure_jit_compiler, nvcc_path, nvcc_version

    nv = nvcc_path()
    env = {"tvm": tvm.__version__, "target": target.name, "target_arch": target.tvm.get("arch"),
           "gpu_code": target.gpu_code or "fatbin", "nvcc": f"{nv} ({nvcc_version(nv)})" if nv else "not found",
           "device": session.where, "gpu_available": session.available,
           "load_time_cuda_compiler": ensure_jit_compiler()}
    env.update({f"session_{k}": v for k, v in getattr(session, "info", {}).items()})
    return env


def run_bench_step(target, args, out: Path, budget_left: float) -> str:
    """The real benchmark on a tiny trained model, rows marked as measured on this GPU."""
    from harness.bench import BenchConfig, run_bench
    from harness.measure import LatencyProtocol
    from harness.report import summary_table
    from laaq.attacks import PGDConfig
    from laaq.robustness import EvalConfig, get_preset
    from laaq.train import TrainConfig

    if budget_left < 90:
        return f"skipped: {budget_left:.0f} s of the time budget left (needs ~90 s)"
    from harness.targets import load_target

    if load_target(target.name).tvm != target.tvm:
        return f"skipped: no target file has this GPU's arch {target.tvm.get('arch')} (add one to targets/)"
    eps = 0.1
    cfg = BenchConfig(
        target=target.name, dataset="digits",
        train=TrainConfig(arch="tinycnn", epochs=3, batch_size=64, lr=5e-3, adversarial=True,
                          pgd=PGDConfig(eps=eps, step_size=0.03, steps=3)),
        evaluation=EvalConfig(get_preset("quick"), eps),
        variants=("fp32", "fp16", "int8", "int4"), eval_samples=360, batch_large=args.batch_large,
        latency=LatencyProtocol(args.warmup, args.number, args.repeat), results_dir=str(out / "bench"))
    import pandas as pd

    res = run_bench(cfg, progress=False, log=log)
    print("\n" + summary_table(pd.DataFrame(res.rows)))
    return f"results in {res.folder}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="auto", help="target file name, or auto (from this GPU's compute capability)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch-large", type=int, default=64)
    p.add_argument("--n-check", type=int, default=256, help="random inputs compared with the host reference")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--number", type=int, default=20)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--energy-window-s", type=float, default=0.5, help="NVML window per variant (0: no energy)")
    p.add_argument("--budget-s", type=float, default=270.0, help="start no new work after this many seconds")
    p.add_argument("--bench", dest="bench", action="store_true", default=None,
                   help="also run laaq-bench bench on a tiny trained model (default: when a GPU is present)")
    p.add_argument("--no-bench", dest="bench", action="store_false")
    p.add_argument("--jit-check", action=argparse.BooleanOptionalAction, default=True,
                   help="also load a library holding CUDA source (compiled at load time)")
    p.add_argument("--allow-no-gpu", action="store_true", help="exit 0 after compile-and-verify when there is no GPU")
    p.add_argument("--out", default="", help="output folder (default results/check-gpu-<time>)")
    args = p.parse_args(argv)

    out = Path(args.out or REPO / "results" / f"check-gpu-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    log("importing TVM and PyTorch ...")
    from harness.devices.cuda import CudaSession

    session = CudaSession(0)
    target = choose_target(args.target, session)
    session.target_arch = str(target.tvm.get("arch", ""))
    env = environment(session, target)
    for k, v in env.items():
        log(f"{k}: {v}")
    if not session.available:
        log(f"NO CUDA DEVICE ({session.why_not}): compiling and verifying only; nothing will be measured")

    plan = [(m, v) for m in args.models.split(",") if m for v in args.variants.split(",") if v]
    if args.jit_check and "tiny" in args.models.split(","):
        plan.append(("tiny", "fp32-jit"))
    results: list[Result] = []
    models: dict[str, tuple] = {}
    for name, variant in plan:
        if time.monotonic() - T0 > args.budget_s:
            results.append(Result(name, variant, status="skipped", check=f"time budget {args.budget_s:.0f} s spent"))
            continue
        log(f"{name}/{variant}: compile, verify{', run, compare, time' if session.available else ''} ...")
        t1 = time.monotonic()
        try:
            if name not in models:
                models[name] = build_model(name)
            model, shape = models[name]
            tgt = replace(target, gpu_code="source") if variant == "fp32-jit" else target
            r = check_one(name, variant, model, shape, tgt, session, args, out)
        except Exception as e:  # noqa: BLE001 - report and continue with the next variant
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            r = Result(name, variant, status="error", error=f"{type(e).__name__}: {first}")
            (out / f"error-{name}-{variant}.txt").write_text(traceback.format_exc())
        results.append(r)
        log(f"{name}/{variant}: {r.status} {r.check or r.error} ({time.monotonic() - t1:.0f} s)")

    print_table(results)
    print(f"\ntolerances: integer variants bit-exact; fp32 |Δ| ≤ {FP32_RTOL:g}·max(1, max|ref|); "
          f"fp16 |Δ| ≤ {FP16_RTOL:g}·max(1, max|ref|). Energy: whole-board NVML energy over the window / images.")
    bench_note = "not requested"
    do_bench = session.available if args.bench is None else args.bench
    if do_bench:
        try:
            bench_note = run_bench_step(target, args, out, args.budget_s + 30 - (time.monotonic() - T0))
        except Exception as e:  # noqa: BLE001
            bench_note = f"error: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            (out / "error-bench.txt").write_text(traceback.format_exc())
        log(f"bench: {bench_note}")

    with open(out / "check_gpu.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in asdict(results[0]) if k != "extra"] if results else ["model"],
                           extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(asdict(r))
    (out / "check_gpu.json").write_text(json.dumps({"environment": env, "results": [asdict(r) for r in results],
                                                    "bench": bench_note, "wall_s": round(time.monotonic() - T0, 1)},
                                                   indent=2, default=str) + "\n")
    failed = [r for r in results if r.status in ("FAIL", "error") and r.variant != "fp32-jit"]
    log(f"done in {time.monotonic() - T0:.0f} s; {len(failed)} failed; files in {out}")
    if not session.available:
        log(f"NO CUDA DEVICE: {session.why_not}. Compile-and-verify only; no latency, accuracy or energy measured.")
        return 1 if failed else (0 if args.allow_no_gpu else 2)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
