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
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import energy
from harness.compile import Artefact, compile_module
from harness.devices import Session, open_device
from harness.devices.system import (
    MemoryWindow,
    pin_cpus,
    pin_threads,
    read_state,
    runtime_threads,
    state_record,
)
from harness.environment import environment
from harness.host_reference import agreement_columns, host_side, write_per_image
from harness.layer_latency import LayerTime, as_constraint_table, latency_limit, layer_table
from harness.measure import LatencyProtocol, outputs, outputs_mixed, timed_call
from harness.preflight import check_config, check_target
from harness.profile import TargetProfile, resolve
from harness.results import RunStore, atomic_write_text, row_tag
from harness.rows import (
    COLUMNS,
    LAYER_COLUMNS,
    is_not_run,
    layer_rows,
    not_run_row,
    robust_columns,
    static_columns,
)
from harness.square_route import square_route, square_stand_in
from harness.stages import RUN_SCOPE, StageClock, earlier_stages, scope_of
from harness.timing import describe as describe_timing
from harness.variant_timing import (
    Measured,
    reload_for_timing,
    time_variants,
    timing_batch,
    timing_pending,
)
from harness.variants import PlanRequest, Variant, build_variants, plan_variant_name
from laaq.data import Split, dataset_slug, load_dataset
from laaq.importer import model_graph
from laaq.quant.integer import logits_from_int
from laaq.quant.plan import QuantPlan
from laaq.robustness import EvalConfig, TransferCache, attack_device, evaluate
from laaq.search import Calibration, CalibrationRecipe
from laaq.search.solver import CANDIDATE_BITS
from laaq.train import TrainConfig, obtain_model
from laaq.usermodel import ModelSource, file_digest

__all__ = ["COLUMNS", "LAYER_COLUMNS", "BenchConfig", "BenchResult", "run_bench"]




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
    model: str = ""  # a user's model, path/to/file.py:factory ("" = the built-in train.arch); weights: its state dict
    weights: str = ""
    laaq_avg_bits: float = 4.0
    # LAAQ's latency budget on the per-layer table measured on the target: "" none, "0.8x" = 0.8 × the
    # int8 plan's summed table latency, "0.05" = milliseconds (batch 1). Measuring the table also fills
    # layers.csv's latency_ms; layer_times alone measures it without constraining the plan.
    latency_budget: str = ""
    layer_times: bool = False
    batch_large: int = 64
    eval_samples: int = 500
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
    # who answers Square's queries: "auto" (the stand-in — bit-exact twin / float model — unless the local artefact
    # is faster), "stand-in" (always it), "artefact" (every query on the artefact: the literal run); the artefact
    # judges every example either way. Part of the hash only when not "auto"
    square_on: str = "auto"
    # time only on a quiet device: wait (bounded) for other processes to calm down, else refuse to time
    quiet_host: bool = False
    # where the white-box attacks run: auto (a CUDA GPU when torch sees one), cpu or cuda; not part of the hash
    # (it changes speed; the twin stays bit-exact on either)
    attack_device: str = "auto"

    def __post_init__(self) -> None:
        check_config(self)  # every field checkable without model or device: one line, before any work

    def model_source(self) -> ModelSource | None:
        return ModelSource.parse(self.model, self.weights) if self.model else None

    def digest(self) -> str:
        d = asdict(self)
        for k in ("results_dir", "run_id", "rpc", "rpc_tracker", "rpc_key", "tune", "trials", "attack_device",
                  "quiet_host"):
            d.pop(k)
        # absent = earlier runs' digests unchanged
        for k, off in (("latency_budget", ""), ("layer_times", False), ("square_on", "auto")):
            if d[k] == off:
                d.pop(k)
        for k, off in (("cooldown_ms", 0), ("cooldown_every", 1), ("pin_threads", ""), ("rounds", 3)):  # likewise
            if d["latency"][k] == off:
                d["latency"].pop(k)
        d["plan_digests"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest()[:12] for p in self.plan_files]
        for k in ("model", "weights"):  # absent for built-in models; else the files' content, not their paths
            path, _, factory = d.pop(k).rpartition(":") if k == "model" else (d.pop(k), "", "")
            if path:
                d[k] = file_digest(path) + factory
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def folder(self) -> Path:
        rid = self.run_id or f"{self.target}-{dataset_slug(self.dataset)}-{self.train.arch}-{self.digest()}"
        return Path(self.results_dir) / rid


def resolve_profile(cfg: BenchConfig) -> TargetProfile:
    """The run's target, resolved once (RPC flags override its [device] table); passed down from here."""
    return resolve(cfg.target, cfg.rpc, cfg.rpc_tracker, cfg.rpc_key)


def calibration(cfg: BenchConfig, model: torch.nn.Module, graph, data: Split) -> Calibration:
    """The run's calibration set (one recipe for bench, search, compile and experiment)."""
    return cfg.calibration.make(graph, data.x_train, data.y_train, cfg.evaluation.eps, cfg.seed, model=model)


def variants_for(cfg: BenchConfig, model: torch.nn.Module, data: Split, table: list[LayerTime] | None = None,
                 calib: Calibration | None = None) -> list[Variant]:
    """The run's variants (built-in names, then plan files), on the run's calibration data (``calib``, made
    here when not given); ``table``: the per-layer latency table measured on the target (LAAQ then also
    respects ``cfg.latency_budget``)."""
    graph = model_graph(model, data.input_shape)
    latency = as_constraint_table(table) if table else None
    limit = latency_limit(cfg.latency_budget, latency, [n.name for n in graph.weighted()]) if latency else None
    calib = calib if calib is not None else calibration(cfg, model, graph, data)
    req = PlanRequest(graph, calib, cfg.laaq_avg_bits, cfg.seed, cfg.train.adversarial, latency, limit)
    return build_variants(cfg.variants, cfg.plan_files, req)


def compile_variant(cfg: BenchConfig, profile: TargetProfile, v: Variant, model: torch.nn.Module,
                    shape: tuple[int, ...], folder: Path, log=print, progress: bool = True,
                    clock: StageClock | None = None) -> dict[int, Artefact]:
    """The variant's libraries at batch 1 and at the large batch (``<row tag>-b<batch>.so`` in ``artefacts/``)."""
    clock = clock if clock is not None else StageClock()
    scope = scope_of(profile.name, v.name)
    arts = {}
    for b in (1, cfg.batch_large):
        with clock.time(scope, f"lowering b{b}"):
            mod = v.lower(model, shape, b, profile)
        with clock.time(scope, f"compile b{b}"):
            arts[b] = compile_module(mod, profile, folder / "artefacts" / f"{row_tag(profile.name, v.name)}-b{b}.so",
                                     v.name, b, tuning_key=v.tuning_key(cfg.train.arch, shape, b, profile),
                                     trials=cfg.trials, tune=cfg.tune, log=log, progress=progress)
    return arts


def measure_variant(cfg: BenchConfig, profile: TargetProfile, session: Session, v: Variant, model: torch.nn.Module,
                    data: Split, folder: Path, progress: bool, log=print, table: list[LayerTime] | None = None,
                    clock: StageClock | None = None, transfers: TransferCache | None = None) -> Measured:
    """Compile one variant at both batch sizes, run it on the device and measure everything but its latency
    (:func:`time_variants` times every variant together, once all are attacked; ``transfers``: shared by them)."""
    clock = clock if clock is not None else StageClock()
    scope = scope_of(profile.name, v.name)
    arts = compile_variant(cfg, profile, v, model, data.input_shape, folder, log, progress, clock)
    if not session.available:  # e.g. no CUDA device: compiled and verified, nothing measured
        return Measured(v.name, not_run_row(profile, session, v, model, arts), layer_rows(profile, v, model, table))
    small, large = 1, cfg.batch_large
    n = min(cfg.eval_samples or len(data.x_test), len(data.x_test))
    x, y = data.x_test[:n], data.y_test[:n]
    host_model, to_device = host_side(v, model)
    inputs = {b: to_device(timing_batch(x, b)) for b in (small, large)}

    with clock.time(scope, "load"):
        window = MemoryWindow(session.system)  # the runtime's footprint: both libraries loaded, one call at each batch
        window.start()
        loaded = {b: session.load(a.path) for b, a in arts.items()}
        call_s = {b: timed_call(loaded[b], inputs[b]) for b in (small, large)}
        memory = window.stop()

    def run(t: torch.Tensor) -> np.ndarray:  # the artefact's own raw outputs (integer: a small remainder at batch 1)
        arr = to_device(t)
        return outputs_mixed(loaded, arr, call_s) if v.kind == "int" else outputs(loaded[large], arr, large)

    def predict(t: torch.Tensor) -> torch.Tensor:  # the artefact: logits from its own outputs
        out = run(t)
        return torch.as_tensor(out if v.kind == "float" else logits_from_int(v.qg, out), dtype=torch.float32)

    tag = row_tag(profile.name, v.name)
    stand_in, square_on = None, ""
    if cfg.evaluation.preset.square_queries:
        if cfg.square_on == "artefact":
            square_on = "artefact (--square-on artefact)"
        else:
            with clock.time(scope, "square routing"):
                stand_in, square_on = square_route(square_stand_in(v, model, host_model, run, to_device), run, x,
                                                   profile.device.kind == "local", large,
                                                   forced=cfg.square_on == "stand-in")
        log(f"[{tag}] Square queries: {square_on}")
    t_att = time.perf_counter()
    rob = evaluate(host_model, x, y, cfg.evaluation, deployed=predict,
                   transfer_source=model if v.kind == "int" else None,
                   state_path=folder / "attack_state" / f"{tag}.npz", state_tag=tag,
                   log=(lambda m: print(f"[{tag}] {m}", flush=True)) if progress else None,
                   stand_in=stand_in, progress=progress, device=attack_device(cfg.attack_device),
                   transfers=transfers, own_threads=profile.device.kind == "local")
    attack_s = time.perf_counter() - t_att
    clock.merge(scope, rob.seconds)
    if rob.stand_in is not None:
        square_on = rob.stand_in.line()
    write_per_image(folder, tag, y.numpy(), rob)
    with clock.time(scope, "agreement"):
        agreement = agreement_columns(v, model, run, to_device, [x, rob.x_worst])
    row = {
        **static_columns(profile, v, model, arts), "measured_as": session.measured_as, "device": session.where,
        "n_eval": n, **robust_columns(rob), **agreement,
        "attack": f"{cfg.evaluation.describe()}; white-box on the "
                  f"{'float model' if v.kind == 'float' else 'bit-exact twin'} ({attack_device(cfg.attack_device)})"
                  ", every example judged on the artefact's outputs",
        "attack_s": round(attack_s, 1), "square_on": square_on,
        "threads": runtime_threads(session.system, profile.threads), "warmup": cfg.latency.warmup,
        "number": cfg.latency.number, "repeat": cfg.latency.repeat, "cooldown_ms": cfg.latency.cooldown_ms,
        "pinned_cpus": ",".join(map(str, pin_cpus(cfg.latency.pin_threads, profile.threads))),
        "rss_peak_mb": memory.peak_mb if memory else "", "rss_delta_mb": memory.delta_mb if memory else "",
    }
    return Measured(v.name, row, layer_rows(profile, v, model, table), loaded, inputs)



@dataclass
class BenchResult:
    folder: Path
    rows: list[dict[str, Any]]
    skipped: list[str]


def pretune(cfg: BenchConfig, profile: TargetProfile, variants: list[Variant], model: torch.nn.Module,
            shape: tuple[int, ...], log) -> None:
    """Tune every (variant kind, batch) key *before* the bench opens the device: the RPC runner
    measures on the same board, and a TVM RPC server serves one session at a time."""
    from harness.tuning import tune

    if profile.backend != "cpu":
        return
    done: set[str] = set()
    for v in variants:
        for b in (1, cfg.batch_large):
            key = v.tuning_key(cfg.train.arch, shape, b, profile)
            if key in done:
                continue
            done.add(key)
            rep = tune(v.lower(model, shape, b, profile), profile, key, cfg.trials, log=log)
            if rep.note:
                log(f"tuning {profile.name}/{key}: {rep.note}")


def run_bench(cfg: BenchConfig, progress: bool = True, log=lambda m: print(m, flush=True)) -> BenchResult:
    """Run (or resume) a benchmark; returns the run folder and its rows."""
    profile = check_target(resolve_profile(cfg))  # a bad target or a missing cross compiler fails before any work
    clock = StageClock()
    with clock.time(RUN_SCOPE, "data"):
        data = load_dataset(cfg.dataset, cfg.seed, cfg.data_dir)
    train_cfg = replace(cfg.train, seed=cfg.seed)
    t0 = time.perf_counter()
    model, ckpt, cached = obtain_model(data, train_cfg, cfg.model_source(), progress=progress)
    clock.add(RUN_SCOPE, "checkpoint (cached)" if cached else "training", time.perf_counter() - t0)
    log(f"model: {ckpt} ({'cached' if cached else f'trained in {time.perf_counter() - t0:.0f} s'})")
    folder = cfg.folder()
    store = RunStore(folder, COLUMNS, LAYER_COLUMNS)
    earlier, earlier_peak = earlier_stages(folder), earlier_stages(folder, "stages_peak_mib")
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    run_info = {"config": asdict(cfg), "target": asdict(profile.target), "environment": environment(),
                "checkpoint": str(ckpt), "latency_protocol": describe_timing(cfg.latency), "started": started,
                "attack_preset": cfg.evaluation.preset.name, "attack": cfg.evaluation.describe(),
                "energy_source": energy.SOURCE, "attack_device": attack_device(cfg.attack_device)}
    store.write_json("run.json", run_info)
    plan_names = {p: plan_variant_name(QuantPlan.from_file(p)) for p in cfg.plan_files}
    todo = [*cfg.variants, *plan_names.values()]
    skipped = [v for v in todo if any(store.key(r) == (profile.name, v) and not is_not_run(r) for r in store.rows)]
    if skipped:
        log(f"resuming {folder}: already measured {', '.join(skipped)}")
    waiting = [str(r["variant"]) for r in store.rows if timing_pending(r) and str(r["target"]) == profile.name]
    if waiting:
        log(f"resuming {folder}: {', '.join(waiting)} attacked, not yet timed (they join this run's timing phase)")
    if len(skipped) < len(todo) or waiting:
        remaining = replace(cfg, variants=tuple(v for v in cfg.variants if v not in skipped),
                            plan_files=tuple(p for p, name in plan_names.items() if name not in skipped))
        variants: list[Variant] = []
        table = None
        if remaining.variants or remaining.plan_files:
            if cfg.latency_budget or cfg.layer_times:  # measured on the device before any plan is searched
                with open_device(profile, progress=progress) as session:
                    log(f"[{profile.name}] per-layer latency table ({session.measured_as}), widths {CANDIDATE_BITS}"
                        " ...")
                    table = layer_table(model_graph(model, data.input_shape), profile, session, CANDIDATE_BITS,
                                        log=log if progress else None)
            with clock.time(RUN_SCOPE, "calibration"):
                calib = calibration(remaining, model, model_graph(model, data.input_shape), data)
            variants = variants_for(remaining, model, data, table, calib)
        for plan_v in variants:
            if plan_v.build_s:
                clock.add(scope_of(profile.name, plan_v.name), "search" if plan_v.name == "laaq" else "quantize",
                          plan_v.build_s)
            if plan_v.plan is not None:
                atomic_write_text(folder / "plans" / f"{plan_v.name.replace(':', '_')}.json", plan_v.plan.to_json())
        if cfg.tune and cfg.trials > 0 and variants:
            with clock.time(RUN_SCOPE, "tuning"):
                pretune(cfg, profile, variants, model, data.input_shape, log)
        with open_device(profile, progress=progress) as session:
            log(f"device: {session.where} ({session.measured_as})")
            pin_threads(session.system, pin_cpus(cfg.latency.pin_threads, profile.threads))
            run_info["device_state"] = state_record(session.system)
            if runtime_threads(session.system, profile.threads) != profile.threads:
                log(f"NOTE: {session.where}'s TVM runtime uses {runtime_threads(session.system, 0)} thread(s), the "
                    f"target asks for {profile.threads} (pool sized earlier, or fewer cores); rows say what it uses")
            measured = [reload_for_timing(cfg, profile, session, name, data, folder) for name in waiting]
            transfers = TransferCache()
            for v in variants:
                t1 = time.perf_counter()
                log(f"[{profile.name}] {v.name}: compile, run, attack ...")
                m = measure_variant(cfg, profile, session, v, model, data, folder, progress, log, table, clock,
                                    transfers)
                store.add(m.row, m.layers)  # accuracy safe on disk; latency follows in the timing phase
                # the row is safe: its resumable attack state is no longer needed
                (folder / "attack_state" / f"{row_tag(profile.name, v.name)}.npz").unlink(missing_ok=True)
                if is_not_run(m.row):
                    log(f"[{profile.name}] {v.name}: {m.row['measured_as'].upper()} — compiled, exported and "
                        f"verified only, nothing measured ({time.perf_counter() - t1:.0f} s)")
                    continue
                measured.append(m)
                log(f"[{profile.name}] {v.name}: clean {m.row['clean_acc']:.3f} robust {m.row['robust_acc']:.3f} "
                    f"[{m.row['robust_ci_lo']:.3f}, {m.row['robust_ci_hi']:.3f}] ({m.row['attack_preset']}) "
                    f"({time.perf_counter() - t1:.0f} s)")
            time_variants(cfg, profile, session, measured, clock, log)
            for m in measured:
                store.update(profile.name, m.name, m.timing)
                log(f"[{profile.name}] {m.name}: b1 {m.timing['lat_small_median_ms']:.3f} ms, "
                    f"b{cfg.batch_large} {m.timing['lat_large_median_ms']:.3f} ms (median of "
                    f"{m.timing['timing_rounds']} interleaved rounds, spread {m.timing['lat_small_spread_pct']} % / "
                    f"{m.timing['lat_large_spread_pct']} %)"
                    f"{'; ' + m.timing['busy_host'] if m.timing['busy_host'] else ''}")
            run_info["device_state"]["at_end"] = asdict(read_state(session.system))
    not_run = sorted({str(r["measured_as"]) for r in store.rows if is_not_run(r)})
    if not_run:
        log(f"NOTE: {'; '.join(not_run)}. The libraries were compiled, exported and verified, but no latency, "
            "accuracy or measured energy exists for those rows (left empty, never estimated). To measure them on a "
            f"machine that has the device: `laaq-bench bundle` with these options, run its runner.py there, then "
            f"`laaq-bench ingest OUTPUT` fills this run folder ({folder.name}).")
    from harness.report import write_run_report
    with clock.time(RUN_SCOPE, "report"):
        run_info["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        run_info["stages"] = {**{k: v for k, v in earlier.items() if k not in clock.seconds}, **clock.seconds}
        run_info["stages_peak_mib"] = {**{k: v for k, v in earlier_peak.items() if k not in clock.peak_mib},
                                       **clock.peak_mib}
        store.write_json("run.json", run_info)
        write_run_report(folder)
    run_info["stages"][RUN_SCOPE] = clock.seconds[RUN_SCOPE]
    store.write_json("run.json", run_info)
    log(f"where the time went (wall seconds; earlier sessions' variants from run.json):\n"
        f"{StageClock(run_info['stages']).summary()}")
    log(f"total this run: {clock.total():.0f} s ({clock.total() / 60:.1f} min)")
    return BenchResult(folder, store.rows, skipped)


