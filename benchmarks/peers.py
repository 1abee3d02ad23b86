"""Peers timed side by side against the hardware limit (``make perf``).

Same model weights, same inputs, same thread count, batch 1 and a larger batch, timed *interleaved*
(round-robin over the peers, ``repeat`` rounds, so drifting machine load hits every peer alike):

* PyTorch eager fp32; PyTorch int8 (FX graph mode, ``x86`` backend = fbgemm/oneDNN kernels);
* ONNX Runtime fp32 and int8 (static QDQ, per-channel int8 weights, uint8 activations);
* TVM fp32, TVM int8 (uniform 8-bit plan) and TVM LAAQ (a mixed plan), each with the tuning
  database of ``harness.tuning`` when one exists (``--trials N`` tunes first).

Weights are random but fixed (seeded, with non-trivial BN statistics): latency does not depend on
the values. Prints latency, ratio to the fastest peer, GMAC/s and the fraction of the target's
``peak_int8_gmacs`` (roofline); writes ``results/perf-<target>/perf.{csv,md}`` atomically.

    python benchmarks/peers.py [--target x86] [--models resnet20,smallcnn] [--batches 1,64]
                               [--trials 0] [--plan plan.json] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=os.environ.get("TARGET", "x86"))
    p.add_argument("--also", default="x86-avx2",
                   help="further x86 targets whose TVM peers join the same interleaved rounds (e.g. the portable "
                        "AVX2 code beside the host-native one: one table per ISA, ratios from one run); '' = none")
    p.add_argument("--models", default="resnet20,smallcnn")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--threads", type=int, default=0, help="default: the target file's threads")
    p.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per model/batch/dtype (0: DB only)")
    p.add_argument("--plan", default="", help="LAAQ plan JSON (default: a fixed mixed 4/6/7-bit plan)")
    p.add_argument("--repeat", type=int, default=15, help="interleaved rounds")
    p.add_argument("--min-round-ms", type=float, default=50.0, help="time per peer per round")
    p.add_argument("--settle-ms", type=float, default=300.0,
                   help="pause before each peer's slot (lets other runtimes' spinning threads sleep)")
    p.add_argument("--peers", default="", help="comma list to restrict (e.g. torch-fp32,tvm-int8)")
    p.add_argument("--out", default="", help="default results/perf-<target>")
    p.add_argument("--quick", action="store_true", help="smoke test: smallcnn, batch 1 and 4, 3 rounds")
    a = p.parse_args()
    if a.quick:
        a.models, a.batches, a.repeat, a.min_round_ms, a.settle_ms = "smallcnn", "1,4", 3, 5.0, 20.0
    return a


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # thread pools are sized at first use: set them before importing the runtimes
    from harness.targets import load_target as _lt

    _threads = ARGS.threads or _lt(ARGS.target).threads
    os.environ["TVM_NUM_THREADS"] = str(_threads)
    os.environ["OMP_NUM_THREADS"] = str(_threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402


# ------------------------------------------------------------------------------------ models
def make_model(arch: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    from laaq.models import ResNet20, SmallCNN, randomize_bn_stats

    torch.manual_seed(0)
    model, shape = (ResNet20(), (3, 32, 32)) if arch == "resnet20" else (SmallCNN(), (1, 28, 28))
    randomize_bn_stats(model)  # non-trivial BN: folding matters
    return model.eval(), shape


def mixed_plan(names: list[str]):
    from laaq.quant.plan import LayerSetting, QuantPlan

    bits = [7, 4, 6, 4]  # first and last layers at 7 bits: every layer ≤ 7 (AVX2: all on the vpmaddubsw path)
    s = {n: LayerSetting(7 if i in (0, len(names) - 1) else bits[i % 4], 1.0) for i, n in enumerate(names)}
    return QuantPlan(s, name="fixed-mixed-4-6-7")


def macs_per_sample(graph) -> int:
    from harness import energy

    bits = {n.name: 8 for n in graph.weighted()}
    return int(energy.model_totals(energy.layer_costs(graph, bits, 8, {}))["macs"])


# ------------------------------------------------------------------------------------- peers
Peer = Callable[[], object]


def torch_fp32(model, x: torch.Tensor) -> Peer:
    def run():
        with torch.no_grad():
            return model(x)
    return run


def torch_int8(model, x: torch.Tensor, calib: torch.Tensor) -> Peer:
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (calib[:1],))
        with torch.no_grad():
            prepared(calib)
        q = convert_fx(prepared)
    return torch_fp32(q, x)


def _onnx_export(model, x: torch.Tensor, path: Path) -> None:
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False, opset_version=17)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_fp32(model, x: torch.Tensor, threads: int, tmp: Path) -> Peer:
    path = tmp / f"fp32-{x.shape[0]}.onnx"
    _onnx_export(model, x, path)
    sess, xn = ort_session(path, threads), x.numpy()
    return lambda: sess.run(None, {"x": xn})


def ort_int8(model, x: torch.Tensor, calib: torch.Tensor, threads: int, tmp: Path) -> Peer:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    f32 = tmp / f"q-src-{x.shape[0]}.onnx"
    _onnx_export(model, x, f32)
    pre = tmp / f"q-pre-{x.shape[0]}.onnx"
    quant_pre_process(str(f32), str(pre), skip_symbolic_shape=True)
    b = x.shape[0]
    batches = [calib[i : i + b].numpy() for i in range(0, len(calib) - b + 1, b)][:8] or [calib[:b].numpy()]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": c} for c in batches)

        def get_next(self):
            return next(self.it, None)

    q = tmp / f"int8-{b}.onnx"
    quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    sess, xn = ort_session(q, threads), x.numpy()
    return lambda: sess.run(None, {"x": xn})


def tvm_peer(mod, target, key: str, trials: int, log) -> tuple[Peer, Callable[[np.ndarray], np.ndarray], str]:
    import tvm
    from tvm import relax

    from harness.backend.float_schedule import float_schedule_note
    from harness.compile import build_executable
    from harness.tuning import database_dir

    t0 = time.perf_counter()
    ex = build_executable(mod, target, tuning_key=key, trials=trials, progress=True, log=log)
    dt = time.perf_counter() - t0
    db = database_dir(target, key)
    tuned = (db / 'database_workload.json').exists()
    note = f"{float_schedule_note(target, tuned) if 'fp32' in key else 'tuned DB' if tuned else 'untuned'}; " \
           f"compile {dt:.0f} s"
    vm = relax.VirtualMachine(ex, tvm.cpu())
    f = vm["main"]
    holder: dict[str, object] = {}

    def set_input(a: np.ndarray) -> np.ndarray:
        holder["x"] = tvm.runtime.tensor(a)
        return f(holder["x"]).numpy()

    return (lambda: f(holder["x"])), set_input, note


def goal_rows(arch: str, batch: int, med: dict[str, float], tvm_targets, target) -> list[dict]:
    """The issue's ratios for one (model, batch), per TVM target (ISA): TVM int8 / the fastest int8 peer,
    LAAQ plan / ORT int8, TVM fp32 / ORT fp32 (same interleaved rounds)."""
    out = []
    peers8 = [med[k] for k in ("torch-int8-fx", "ort-int8-qdq") if k in med]
    for tgt in tvm_targets:
        sfx = "" if tgt is target else f"@{tgt.name}"
        ratio = lambda num, den: round(num / den, 2) if num and den else ""  # noqa: E731
        out.append({"model": arch, "batch": batch, "target": tgt.name, "cpu": tgt.cpu,
                    "int8_vs_best_int8_peer": ratio(med.get(f"tvm-int8{sfx}"), min(peers8, default=None)),
                    "laaq_vs_ort_int8": ratio(med.get(f"tvm-laaq{sfx}"), med.get("ort-int8-qdq")),
                    "fp32_vs_ort_fp32": ratio(med.get(f"tvm-fp32{sfx}"), med.get("ort-fp32"))})
    return out


def goal_table(goals: list[dict]) -> list[str]:
    """Markdown: the ratios per ISA (goals: int8 ≤ 1.0, LAAQ ≤ 0.7 at batch 1, fp32 ≤ 2)."""
    lines = ["", "## Ratios per ISA (same rounds; goals: TVM int8 ≤ 1.0× the fastest int8 peer, LAAQ plan ≤ 0.7× "
             "ORT int8 at batch 1, TVM fp32 ≤ 2× ORT fp32)", "",
             "| model | batch | TVM target (code) | TVM int8 / fastest int8 peer | LAAQ plan / ORT int8 | "
             "TVM fp32 / ORT fp32 |", "|---|---|---|---|---|---|"]
    lines += [f"| {g['model']} | {g['batch']} | {g['target']} ({g['cpu']}) | {g['int8_vs_best_int8_peer']} | "
              f"{g['laaq_vs_ort_int8']} | {g['fp32_vs_ort_fp32']} |" for g in goals]
    return lines


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(a: argparse.Namespace) -> int:
    from harness.lower import lower_float, lower_integer_for
    from harness.measure import interleaved, per_call_ms
    from harness.profile import resolve
    from harness.results import atomic_write_text
    from harness.tuning import default_key
    from laaq.importer import model_graph
    from laaq.quant.integer import run_integer
    from laaq.quant.plan import QuantPlan
    from laaq.quant.quantizers import calibrate, quantize_graph, quantize_input

    target = resolve(a.target)  # the profile: everything below reads it, not the target file
    threads = a.threads or target.threads
    torch.set_num_threads(threads)
    if target.cross or target.device.kind != "local":
        print(f"peers run natively; target {target.name} is not this machine (use an x86 target)", file=sys.stderr)
        return 2
    wanted = set(filter(None, a.peers.split(",")))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    out_dir = Path(a.out or ROOT / "results" / f"perf-{target.name}")
    rows: list[dict] = []
    flags = Path("/proc/cpuinfo").read_text()
    cpu = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), "?")
    vnni = "avx512_vnni" in flags
    log(f"target {target.name} ({target.target.tvm}), threads {threads}, host {cpu} (avx512_vnni: {vnni}), "
        f"load {load_avg()}")
    tmp = Path(tempfile.mkdtemp(prefix="laaq-peers-"))
    tvm_targets = [target] + [resolve(t) for t in filter(None, a.also.split(",")) if t != target.name]
    goals: list[dict] = []
    for arch in a.models.split(","):
        model, shape = make_model(arch)
        graph = model_graph(model, shape)
        names = [n.name for n in graph.weighted()]
        macs = macs_per_sample(graph)
        gen = torch.Generator().manual_seed(1)
        calib = torch.rand(64, *shape, generator=gen)
        scales = calibrate(graph, calib)
        plan_laaq = QuantPlan.from_file(a.plan) if a.plan else mixed_plan(names)
        qg8 = quantize_graph(graph, QuantPlan.uniform(names, 8), calib, act_scales=scales)
        qgl = quantize_graph(graph, plan_laaq, calib, act_scales=scales)
        for b in [int(s) for s in a.batches.split(",")]:
            x = torch.rand(b, *shape, generator=gen)
            xq = quantize_input(x).numpy()
            peers: dict[str, Peer] = {}
            notes: dict[str, str] = {}

            def add(name: str, make: Callable, *args) -> None:
                if wanted and name not in wanted:
                    return
                try:
                    peers[name] = make(*args)  # noqa: B023 - called right here, inside the iteration
                except Exception as e:  # a peer that cannot run is reported, not fatal
                    notes[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"  # noqa: B023
                    log(f"  {name}: {notes[name]}")  # noqa: B023

            log(f"[{arch} b{b}] building peers ...")
            add("torch-fp32", torch_fp32, model, x)
            add("torch-int8-fx", torch_int8, model, x, calib)
            add("ort-fp32", ort_fp32, model, x, threads, tmp)
            add("ort-int8-qdq", ort_int8, model, x, calib, threads, tmp)
            for tgt, (base, qg) in ((t, p) for t in tvm_targets for p in (("tvm-fp32", None), ("tvm-int8", qg8),
                                                                          ("tvm-laaq", qgl))):
                name = base if tgt is target else f"{base}@{tgt.name}"
                if wanted and base not in wanted and name not in wanted:
                    continue
                runnable, why = tgt.host_runs, tgt.host_runs_why
                if not runnable:  # e.g. a VNNI target on a host without avx512_vnni: would die of SIGILL
                    notes[name] = f"skipped: {why}"
                    continue
                try:
                    mod = lower_float(model, shape, b) if qg is None else lower_integer_for(qg, b, tgt)
                    kind = "fp32" if base == "tvm-fp32" else tgt.int8_pattern
                    key = default_key(arch, shape, b, kind)
                    fn, set_input, notes[name] = tvm_peer(mod, tgt, key, a.trials, log)
                    notes[name] = f"{tgt.cpu}; {notes[name]}"
                    if base == "tvm-fp32":
                        got = set_input(x.numpy())
                        with torch.no_grad():
                            ok = np.allclose(got, model(x).numpy(), atol=1e-3, rtol=1e-3)
                    else:
                        got = set_input(xq)
                        ok = np.array_equal(got, run_integer(qg8 if base == "tvm-int8" else qgl, xq))
                    notes[name] += "; bit-exact" if (ok and base != "tvm-fp32") else ("; matches torch" if ok else
                                                                                     "; OUTPUT MISMATCH")
                    peers[name] = fn
                except Exception as e:  # noqa: BLE001
                    notes[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                    log(f"  {name}: {notes[name]}")
            log(f"[{arch} b{b}] timing {len(peers)} peers interleaved, {a.repeat} rounds (load {load_avg()}) ...")
            lat = interleaved({k: per_call_ms(fn, a.min_round_ms, a.settle_ms) for k, fn in peers.items()},
                              a.repeat)
            med = {k: statistics.median(v) for k, v in lat.items()}
            best = min(med.values()) if med else float("nan")
            fastest = min(med, key=med.get) if med else ""
            for name in list(peers) + [n for n in notes if n not in peers]:
                m = med.get(name)
                gmacs = macs * b / (m / 1e3) / 1e9 if m else None
                rows.append({
                    "model": arch, "batch": b, "peer": name, "median_ms": round(m, 4) if m else "",
                    "p10_ms": round(float(np.percentile(lat[name], 10)), 4) if m else "",
                    "p90_ms": round(float(np.percentile(lat[name], 90)), 4) if m else "",
                    "ratio_to_fastest": round(m / best, 2) if m else "", "fastest": fastest,
                    "gmac_s": round(gmacs, 2) if gmacs else "",
                    "frac_int8_peak": round(gmacs / target.target.peak_int8_gmacs, 4)
                    if gmacs and target.target.peak_int8_gmacs else "",
                    "roofline_ms": round(macs * b / (target.target.peak_int8_gmacs * 1e9) * 1e3, 4)
                    if target.target.peak_int8_gmacs else "",
                    "macs_per_sample": macs, "threads": threads, "note": notes.get(name, ""),
                })
            goals += goal_rows(arch, b, med, tvm_targets, target)
            for r in rows[-len(peers) - len([n for n in notes if n not in peers]):]:
                print(f"{r['model']:9s} b{r['batch']:<3d} {r['peer']:14s} {str(r['median_ms']):>9s} ms  "
                      f"x{str(r['ratio_to_fastest']):>5s}  {str(r['gmac_s']):>7s} GMAC/s  "
                      f"{str(r['frac_int8_peak']):>7s} of int8 peak  {r['note']}", flush=True)
    cols = list(rows[0]) if rows else []
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out_dir / "perf.csv", buf.getvalue())
    md = [f"# Peers on {target.name}", "",
          f"Host: {cpu} (avx512_vnni: {vnni}); TVM target {target.target.tvm}; {threads} threads; "
          f"load average at end {load_avg()}; {a.repeat} interleaved rounds of ≥ {a.min_round_ms:g} ms per peer, "
          f"each after a {a.settle_ms:g} ms pause + 1 untimed call; weights random but fixed (seed 0).",
          f"Roofline: peak_int8_gmacs = {target.target.peak_int8_gmacs} from {target.target.path}.", "",
          "| model | batch | peer | median ms | × fastest | GMAC/s | of int8 peak | note |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['batch']} | {r['peer']} | {r['median_ms']} | {r['ratio_to_fastest']} | "
           f"{r['gmac_s']} | {r['frac_int8_peak']} | {r['note']} |" for r in rows]
    md += goal_table(goals)
    atomic_write_text(out_dir / "perf.md", "\n".join(md) + "\n")
    print("\n".join(goal_table(goals)), flush=True)
    log(f"wrote {out_dir}/perf.csv and perf.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
