"""The one entry point a test or the CLI calls: model → plans → compile → run → measure → results.

``run_bench(BenchConfig(...))`` trains (or loads) the model, builds each variant (fp32 through
TVM's PyTorch frontend; integer variants from a quantization plan), compiles it for the target at
batch 1 and at the large batch, runs it on the target's device, and writes one row per variant.
Accuracy comes from the artefact's outputs; PGD examples are crafted on the exact host twin of
the same model (bit-exact with the integer artefact) and then fed to the artefact.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import energy
from harness.compile import compile_module
from harness.devices import open_device
from harness.fast_int8 import lower_integer_for, scheme_for
from harness.gpu import is_not_run, lower_float16, not_run_row
from harness.lower import lower_float
from harness.measure import LatencyProtocol, latency, outputs
from harness.results import RunStore, row_tag
from harness.sensors import measured_energy_uj
from harness.targets import Target, load_target
from harness.tune import default_key
from laaq.data import Split, load_dataset
from laaq.quant.integer import logits_from_int, run_integer
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import QuantizedGraph, calibrate, quantize_graph, quantize_input
from laaq.quant.twin import Twin
from laaq.robustness import EvalConfig, RobustResult, evaluate
from laaq.search import Calibration, CalibrationRecipe
from laaq.train import TrainConfig, train_or_load

# Every column of metrics.csv, in order; README.md documents each one.
COLUMNS = [
    "target", "measured_as", "device", "variant", "kind", "plan", "avg_weight_bits", "act_bits",
    "batch_small", "lat_small_median_ms", "lat_small_p90_ms", "lat_small_mean_ms", "lat_small_std_ms",
    "thr_small_ips", "batch_large", "lat_large_median_ms", "lat_large_p90_ms", "lat_large_mean_ms",
    "lat_large_std_ms", "thr_large_ips", "clean_acc", "clean_ci_lo", "clean_ci_hi", "robust_acc", "robust_ci_lo",
    "robust_ci_hi", "attack_preset", "per_attack", "gradient_masking", "sanity", "eps_curve", "agreement",
    "bitexact", "max_abs_diff", "n_eval", "attack", "attack_s", "macs", "bops", "weight_bytes", "artefact_bytes",
    "energy_proxy_uj", "energy_measured_uj", "threads", "warmup", "number", "repeat", "compile_s", "timestamp",
]
LAYER_COLUMNS = ["target", "variant", "layer", "kind", "shape", "macs", "weight_bits", "clip", "scale_min",
                 "scale_max", "act_scale", "weight_bytes", "energy_proxy_pj"]

BUILTIN_VARIANTS = ("fp32", "fp16", "int8", "int4", "laaq")


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run depends on; its hash names the run folder (so re-runs resume)."""

    target: str = "x86"
    dataset: str = "mnist5k"
    data_dir: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    # robust accuracy: the per-image worst case of an attack ensemble (laaq.robustness), default `standard`
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    variants: tuple[str, ...] = ("fp32", "int8", "laaq")
    plan_files: tuple[str, ...] = ()
    laaq_avg_bits: float = 4.0
    batch_large: int = 64
    eval_samples: int = 1000
    calibration: CalibrationRecipe = field(default_factory=CalibrationRecipe)
    latency: LatencyProtocol = field(default_factory=LatencyProtocol)
    seed: int = 0
    results_dir: str = "results"
    run_id: str = ""
    # device overrides (flags / environment); not part of the run hash: the same run can move boards
    rpc: str = ""
    rpc_tracker: str = ""
    rpc_key: str = ""
    # MetaSchedule: a database per (target, arch, shape, batch, dtype pattern) is applied when present;
    # trials > 0 tunes what it lacks first. Not part of the run hash (it changes speed, not results).
    tune: bool = True
    trials: int = 0

    def digest(self) -> str:
        d = asdict(self)
        for k in ("results_dir", "run_id", "rpc", "rpc_tracker", "rpc_key", "tune", "trials"):
            d.pop(k)
        d["plan_digests"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest()[:12] for p in self.plan_files]
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def folder(self) -> Path:
        rid = self.run_id or f"{self.target}-{self.dataset}-{self.train.arch}-{self.digest()}"
        return Path(self.results_dir) / rid


def resolve_target(cfg: BenchConfig) -> Target:
    """The target file, with RPC flags overriding its [device] table."""
    t = load_target(cfg.target)
    if cfg.rpc:
        host, _, port = cfg.rpc.rpartition(":")
        t = t.with_device(kind="rpc", host=host, port=int(port))
    elif cfg.rpc_tracker:
        host, _, port = cfg.rpc_tracker.rpartition(":")
        t = t.with_device(kind="tracker", host=host, port=int(port), key=cfg.rpc_key)
    return t


def environment() -> dict[str, Any]:
    import pandas
    import tvm

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": sys.version.split()[0], "torch": torch.__version__, "tvm": tvm.__version__,
            "numpy": np.__version__, "pandas": pandas.__version__, "host_cpu": cpu, "host_cores": os.cpu_count(),
            "host_machine": platform.machine(), "platform": platform.platform()}


@dataclass
class Variant:
    """A model to compile: either the float model or a quantized graph (with its plan)."""

    name: str
    kind: str  # "float" | "int"
    plan: QuantPlan | None = None
    qg: QuantizedGraph | None = None


def calibration(cfg: BenchConfig, model: torch.nn.Module, graph, data: Split) -> Calibration:
    """The run's calibration set (one recipe for bench, search, compile and experiment)."""
    return cfg.calibration.make(graph, data.x_train, data.y_train, cfg.evaluation.eps, cfg.seed, model=model)


def laaq_plan(graph, calib: Calibration, cfg: BenchConfig) -> QuantPlan:
    """The LAAQ plan at the run's average-bit budget, on the run's adversarial calibration data (laaq.search)."""
    from laaq.search import Budget, SearchConfig, search_plan

    # refinement optimises the adversarial loss: meaningless (and harmful) for a plainly trained model
    scfg = SearchConfig(seed=cfg.seed, refine=cfg.train.adversarial)
    return search_plan("laaq", graph, calib, Budget(avg_bits=cfg.laaq_avg_bits), scfg)


def float_bits(v: Variant) -> int:
    """Bit width of a float variant's weights and activations (for size and energy proxies)."""
    return 16 if v.name == "fp16" else 32


def variant_bits(v: Variant, graph) -> dict[str, int]:
    """Weight bits per weighted layer: the plan's for integer variants, the float width otherwise."""
    return {n.name: (v.plan.setting(n.name).bits if v.plan else float_bits(v)) for n in graph.weighted()}


def build_variants(cfg: BenchConfig, model: torch.nn.Module, data: Split, progress: bool) -> list[Variant]:
    graph = model.to_graph()
    names = [n.name for n in graph.weighted()]
    calib = calibration(cfg, model, graph, data)
    scales = calibrate(graph, calib.all_x)  # clean + adversarial inputs, the same for every plan
    out: list[Variant] = []
    plans: list[tuple[str, QuantPlan]] = []
    for v in cfg.variants:
        if v in ("fp32", "fp16"):  # fp16: half-precision weights/activations, fp32 accumulation (harness.gpu)
            out.append(Variant(v, "float"))
        elif v in ("int8", "int4"):
            bits = int(v[3:])
            plans.append((v, QuantPlan.uniform(names, bits, name=f"uniform-w{bits}")))
        elif v == "laaq":
            plans.append(("laaq", laaq_plan(graph, calib, cfg)))
        else:
            raise ValueError(f"unknown variant {v!r}; built-in variants are {BUILTIN_VARIANTS} "
                             "(add plans with --plan FILE)")
    for p in cfg.plan_files:
        plan = QuantPlan.from_file(p)
        plans.append((f"plan:{plan.name}", plan))
    for name, plan in plans:
        out.append(Variant(name, "int", plan, quantize_graph(graph, plan, calib.all_x, act_scales=scales)))
    return out


def robust_columns(rob: RobustResult) -> dict[str, Any]:
    """The accuracy columns of a row: figures with Wilson 95 % intervals, members, checks, ε-curve."""
    (c_lo, c_hi), (r_lo, r_hi) = rob.interval("clean"), rob.interval("robust")
    return {"clean_acc": round(rob.clean_acc, 4), "clean_ci_lo": round(c_lo, 4), "clean_ci_hi": round(c_hi, 4),
            "robust_acc": round(rob.robust_acc, 4), "robust_ci_lo": round(r_lo, 4), "robust_ci_hi": round(r_hi, 4),
            "attack_preset": rob.config.preset.name, "per_attack": rob.members_str(),
            "gradient_masking": rob.gradient_masking, "sanity": rob.checks_str(), "eps_curve": rob.curve_str()}


def write_per_image(folder: Path, tag: str, labels: np.ndarray, rob: RobustResult) -> Path:
    """Per-image outcomes (1 = correct) so that any two variants can be compared later (McNemar)."""
    import pandas as pd

    from harness.results import atomic_write_text

    cols = {"index": np.arange(rob.n), "label": labels, "clean": rob.clean.astype(int)}
    cols.update({k: v.astype(int) for k, v in rob.cumulative.items()})
    cols["robust"] = rob.robust.astype(int)
    path = folder / "per_image" / f"{tag}.csv"
    atomic_write_text(path, pd.DataFrame(cols).to_csv(index=False))
    return path


def _layer_rows(target: str, v: Variant, model: torch.nn.Module, overrides: dict[str, float]) -> list[dict]:
    graph = v.qg.graph if v.qg else model.to_graph()
    bits = variant_bits(v, graph)
    rows = []
    for c in energy.layer_costs(graph, bits, 8, overrides):
        q = v.qg.qnodes[c.name] if v.qg else None
        rows.append({
            "target": target, "variant": v.name, "layer": c.name, "kind": c.kind,
            "shape": "x".join(map(str, graph.node(c.name).weight.shape)), "macs": c.macs, "weight_bits": c.w_bits,
            "clip": q.setting.clip if q else "", "scale_min": f"{q.w_scale.min():.4g}" if q else "",
            "scale_max": f"{q.w_scale.max():.4g}" if q else "", "act_scale": f"{q.s_out:.4g}" if q else "",
            "weight_bytes": c.weight_bytes, "energy_proxy_pj": round(c.energy_pj, 1),
        })
    return rows


def int8_pattern(target: Target) -> str:
    """Tuning-key part for integer variants: kernels differ by lowering scheme, not by bit width."""
    scheme = scheme_for(target)
    return "int8" if scheme is None else f"int8-{scheme.name}"


def lower_variant(v: Variant, model: torch.nn.Module, shape: tuple[int, ...], batch: int, target: Target):
    """The Relax module of one variant at one batch size, for ``target``'s int8 scheme."""
    if v.kind == "float":
        return (lower_float16 if v.name == "fp16" else lower_float)(model, shape, batch)
    return lower_integer_for(v.qg, batch, target)


def tuning_key(cfg: BenchConfig, target: Target, v: Variant, shape: tuple[int, ...], batch: int) -> str:
    return default_key(cfg.train.arch, shape, batch, v.name if v.kind == "float" else int8_pattern(target))


def measure_variant(cfg: BenchConfig, target: Target, session: Any, v: Variant, model: torch.nn.Module,
                    data: Split, folder: Path, progress: bool) -> tuple[dict[str, Any], list[dict]]:
    """Compile one variant at both batch sizes, run it on the device and measure everything."""
    shape = data.input_shape
    art_dir = folder / "artefacts"
    small, large = 1, cfg.batch_large
    arts = {}
    for b in (small, large):
        arts[b] = compile_module(lower_variant(v, model, shape, b, target), target,
                                 art_dir / f"{row_tag(target.name, v.name)}-b{b}.so", v.name, b,
                                 tuning_key=tuning_key(cfg, target, v, shape, b), trials=cfg.trials, tune=cfg.tune)
    if not getattr(session, "available", True):  # e.g. no CUDA device: compiled and verified, nothing measured
        return not_run_row(cfg, target, session, v, model, arts), _layer_rows(target.name, v, model, target.energy)
    loaded = {b: session.load(a.path) for b, a in arts.items()}

    n = min(cfg.eval_samples or len(data.x_test), len(data.x_test))
    x, y = data.x_test[:n], data.y_test[:n]
    if v.kind == "float":
        host_model: torch.nn.Module = model
        to_device = lambda t: t.numpy().astype(np.float32)  # noqa: E731
    else:
        host_model = Twin(v.qg)
        to_device = lambda t: quantize_input(t).numpy()  # noqa: E731

    def predict(t: torch.Tensor) -> torch.Tensor:  # the artefact: logits from its own outputs
        out = outputs(loaded[large], to_device(t), large)
        return torch.as_tensor(out if v.kind == "float" else logits_from_int(v.qg, out), dtype=torch.float32)

    tag = row_tag(target.name, v.name)
    t_att = time.perf_counter()
    rob = evaluate(host_model, x, y, cfg.evaluation, deployed=predict,
                   transfer_source=model if v.kind == "int" else None,
                   state_path=folder / "attack_state" / f"{tag}.npz", state_tag=tag,
                   log=(lambda m: print(f"[{tag}] {m}", flush=True)) if progress else None)
    attack_s = time.perf_counter() - t_att
    write_per_image(folder, tag, y.numpy(), rob)

    agree = bitexact = 0
    max_diff = 0.0
    for inp in (x, rob.x_worst):  # the artefact against the host reference on clean and worst-case inputs
        dev_out = outputs(loaded[large], to_device(inp), large)
        if v.kind == "float":
            with torch.no_grad():
                ref = model(inp).numpy()
            logits = dev_out
            max_diff = max(max_diff, float(np.abs(dev_out - ref).max()))
            bitexact += int(np.all(dev_out == ref, axis=1).sum())
        else:
            ref_int = run_integer(v.qg, to_device(inp))
            bitexact += int(np.all(dev_out == ref_int, axis=1).sum())
            max_diff = max(max_diff, float(np.abs(dev_out.astype(np.int64) - ref_int).max()))
            logits = logits_from_int(v.qg, dev_out)
            ref = logits_from_int(v.qg, ref_int)
        agree += int((logits.argmax(1) == ref.argmax(1)).sum())

    lat = {b: latency(loaded[b], to_device(x[:b] if b <= n else x[:1].repeat(b, 1, 1, 1)), cfg.latency)
           for b in (small, large)}
    graph = v.qg.graph if v.qg else model.to_graph()
    bits = variant_bits(v, graph)
    totals = energy.model_totals(energy.layer_costs(graph, bits, 8, target.energy))
    row = {
        "target": target.name, "measured_as": session.measured_as, "device": session.where, "variant": v.name,
        "kind": v.kind, "plan": v.plan.name if v.plan else ("float16" if v.name == "fp16" else "float32"),
        "avg_weight_bits": round(v.plan.avg_bits({nd.name: nd.weight.size for nd in graph.weighted()}), 3)
        if v.plan else (16 if v.name == "fp16" else 32), "act_bits": 8 if v.plan else (16 if v.name == "fp16" else 32),
        "batch_small": small, "batch_large": large, "n_eval": n,
        **robust_columns(rob),
        "agreement": round(agree / (2 * n), 4), "bitexact": round(bitexact / (2 * n), 4) if v.kind == "int" else "",
        "max_abs_diff": f"{max_diff:.3g}",
        "attack": f"{cfg.evaluation.describe()}; white-box on the "
                  f"{'float model' if v.kind == 'float' else 'bit-exact twin'}"
                  ", every example judged on the artefact's outputs",
        "attack_s": round(attack_s, 1),
        "macs": totals["macs"], "bops": totals["bops"], "weight_bytes": totals["weight_bytes"],
        "artefact_bytes": arts[small].size_bytes, "energy_proxy_uj": round(totals["energy_proxy_uj"], 4),
        "energy_measured_uj": measured_energy_uj(session, loaded[large], to_device(x[:large] if large <= n else
                                                 x[:1].repeat(large, 1, 1, 1)), lat[large].median_ms),
        "threads": target.threads, "warmup": cfg.latency.warmup,
        "number": cfg.latency.number, "repeat": cfg.latency.repeat,
        "compile_s": round(sum(a_.compile_s for a_ in arts.values()), 2),
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    for tag, b in (("small", small), ("large", large)):
        s = lat[b]
        row.update({f"lat_{tag}_median_ms": round(s.median_ms, 4), f"lat_{tag}_p90_ms": round(s.p90_ms, 4),
                    f"lat_{tag}_mean_ms": round(s.mean_ms, 4), f"lat_{tag}_std_ms": round(s.std_ms, 4),
                    f"thr_{tag}_ips": round(s.throughput, 1)})
    return row, _layer_rows(target.name, v, model, target.energy)


@dataclass
class BenchResult:
    folder: Path
    rows: list[dict[str, Any]]
    skipped: list[str]


def pretune(cfg: BenchConfig, target: Target, variants: list[Variant], model: torch.nn.Module,
            shape: tuple[int, ...], log) -> None:
    """Tune every (variant kind, batch) key *before* the bench opens the device: the RPC runner
    measures on the same board, and a TVM RPC server serves one session at a time."""
    from harness import tune

    if target.tvm.get("kind") != "llvm":
        return
    done: set[str] = set()
    for v in variants:
        for b in (1, cfg.batch_large):
            key = tuning_key(cfg, target, v, shape, b)
            if key in done:
                continue
            done.add(key)
            rep = tune.tune(lower_variant(v, model, shape, b, target), target, key, cfg.trials, log=log)
            if rep.note:
                log(f"tuning {target.name}/{key}: {rep.note}")


def run_bench(cfg: BenchConfig, progress: bool = True, log=lambda m: print(m, flush=True)) -> BenchResult:
    """Run (or resume) a benchmark; returns the run folder and its rows."""
    target = resolve_target(cfg)  # fail on a bad target before any expensive work
    data = load_dataset(cfg.dataset, cfg.seed, cfg.data_dir)
    train_cfg = replace(cfg.train, seed=cfg.seed)
    t0 = time.perf_counter()
    model, ckpt, cached = train_or_load(data, train_cfg, progress=progress)
    log(f"model: {ckpt} ({'cached' if cached else f'trained in {time.perf_counter() - t0:.0f} s'})")
    folder = cfg.folder()
    store = RunStore(folder, COLUMNS, LAYER_COLUMNS)
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    run_info = {"config": asdict(cfg), "target": asdict(target), "environment": environment(),
                "checkpoint": str(ckpt), "latency_protocol": cfg.latency.describe(), "started": started,
                "attack_preset": cfg.evaluation.preset.name, "attack": cfg.evaluation.describe(),
                "energy_source": energy.SOURCE}
    store.write_json("run.json", run_info)
    todo = [v for v in cfg.variants] + [f"plan:{QuantPlan.from_file(p).name}" for p in cfg.plan_files]
    skipped = [v for v in todo if any(store.key(r) == (target.name, v) and not is_not_run(r) for r in store.rows)]
    if skipped:
        log(f"resuming {folder}: already measured {', '.join(skipped)}")
    if len(skipped) < len(todo):
        remaining = replace(cfg, variants=tuple(v for v in cfg.variants if v not in skipped),
                            plan_files=tuple(p for p in cfg.plan_files
                                             if f"plan:{QuantPlan.from_file(p).name}" not in skipped))
        variants = build_variants(remaining, model, data, progress)
        for plan_v in variants:
            if plan_v.plan is not None:
                from harness.results import atomic_write_text

                atomic_write_text(folder / "plans" / f"{plan_v.name.replace(':', '_')}.json", plan_v.plan.to_json())
        if cfg.tune and cfg.trials > 0:
            pretune(cfg, target, variants, model, data.input_shape, log)
        with open_device(target, progress=progress) as session:
            log(f"device: {session.where} ({session.measured_as})")
            for v in variants:
                t1 = time.perf_counter()
                log(f"[{target.name}] {v.name}: compile, run, attack, time ...")
                row, layer_rows = measure_variant(cfg, target, session, v, model, data, folder, progress)
                store.add(row, layer_rows)
                # the row is safe: its resumable attack state is no longer needed
                (folder / "attack_state" / f"{row_tag(target.name, v.name)}.npz").unlink(missing_ok=True)
                if is_not_run(row):
                    log(f"[{target.name}] {v.name}: {row['measured_as'].upper()} — compiled, exported and verified "
                        f"only, nothing measured ({time.perf_counter() - t1:.0f} s)")
                    continue
                log(f"[{target.name}] {v.name}: clean {row['clean_acc']:.3f} robust {row['robust_acc']:.3f} "
                    f"[{row['robust_ci_lo']:.3f}, {row['robust_ci_hi']:.3f}] ({row['attack_preset']}) "
                    f"b1 {row['lat_small_median_ms']:.3f} ms ({time.perf_counter() - t1:.0f} s)")
    not_run = sorted({str(r["measured_as"]) for r in store.rows if is_not_run(r)})
    if not_run:
        log(f"NOTE: {'; '.join(not_run)}. The libraries were compiled, exported and verified, but no latency, "
            "accuracy or measured energy exists for those rows (left empty, never estimated).")
    run_info["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    store.write_json("run.json", run_info)
    from harness.report import write_run_report

    write_run_report(folder)
    return BenchResult(folder, store.rows, skipped)
