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
from harness.compile import Artefact, compile_module
from harness.devices import Session, open_device
from harness.devices.base import LoadedModule
from harness.devices.system import (
    LocalSystem,
    MemoryWindow,
    pin_cpus,
    pin_threads,
    read_state,
    runtime_threads,
    state_record,
)
from harness.layer_latency import LayerTime, as_constraint_table, latency_limit, layer_table, parse_latency_budget
from harness.measure import LatencyProtocol, outputs
from harness.profile import TargetProfile, resolve
from harness.results import ResultsError, RunStore, atomic_write_text, row_tag
from harness.rows import (
    COLUMNS,
    LAYER_COLUMNS,
    conditions_columns,
    is_not_run,
    latency_columns,
    layer_rows,
    not_run_row,
    robust_columns,
    static_columns,
)
from harness.sensors import measured_energy_uj
from harness.stages import RUN_SCOPE, StageClock, scope_of
from harness.timing import QUIET_WAIT_S, timing_phase, wait_for_quiet
from harness.timing import describe as describe_timing
from harness.variants import PlanRequest, Variant, build_variants, plan_variant_name
from laaq.data import Split, load_dataset
from laaq.importer import model_graph
from laaq.quant.integer import logits_from_int, run_integer
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_input
from laaq.quant.twin import Twin
from laaq.robustness import EvalConfig, RobustResult, StandIn, attack_device, evaluate
from laaq.search import Calibration, CalibrationRecipe
from laaq.search.solver import CANDIDATE_BITS
from laaq.train import TrainConfig, obtain_model
from laaq.usermodel import ModelSource, file_digest

__all__ = ["COLUMNS", "LAYER_COLUMNS", "BenchConfig", "BenchResult", "run_bench"]


SQUARE_ON = ("auto", "stand-in", "artefact")


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
        parse_latency_budget(self.latency_budget)  # a bad spec stops here, before any work
        attack_device(self.attack_device)  # so does cuda on a machine without a GPU
        if self.square_on not in SQUARE_ON:
            raise ValueError(f"square_on must be one of {', '.join(SQUARE_ON)}, got {self.square_on!r}")
        self.model_source()  # so does a missing model file, factory spec or weights file

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
        rid = self.run_id or f"{self.target}-{self.dataset}-{self.train.arch}-{self.digest()}"
        return Path(self.results_dir) / rid


def resolve_profile(cfg: BenchConfig) -> TargetProfile:
    """The run's target, resolved once (RPC flags override its [device] table); passed down from here."""
    return resolve(cfg.target, cfg.rpc, cfg.rpc_tracker, cfg.rpc_key)


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


def write_per_image(folder: Path, tag: str, labels: np.ndarray, rob: RobustResult) -> Path:
    """Per-image outcomes (1 = correct) so that any two variants can be compared later (McNemar)."""
    import pandas as pd

    cols = {"index": np.arange(rob.n), "label": labels, "clean": rob.clean.astype(int)}
    cols.update({k: v.astype(int) for k, v in rob.cumulative.items()})
    cols["robust"] = rob.robust.astype(int)
    path = folder / "per_image" / f"{tag}.csv"
    atomic_write_text(path, pd.DataFrame(cols).to_csv(index=False))
    return path


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


def host_side(v: Variant, model: torch.nn.Module) -> tuple[torch.nn.Module, Any]:
    """The variant's white-box stand-in (the float model, or the bit-exact twin of the integer graph) and
    ``to_device``: float images → the array the artefact takes (float32, or uint8 codes)."""
    return (model if v.kind == "float" else Twin(v.qg)), device_input(v.kind)


def device_input(kind: str):
    """float images → the array an artefact of this kind takes: float32, or the uint8 codes of an integer one."""
    if kind == "float":
        return lambda t: t.numpy().astype(np.float32)
    return lambda t: quantize_input(t).numpy()


def square_stand_in(v: Variant, model: torch.nn.Module, host_model: torch.nn.Module, run,
                    to_device) -> StandIn | None:
    """The cheap function that answers Square's queries for ``v`` (``run``: the artefact's raw outputs), or
    None where there is none: fp16 (no host model computes the artefact's half-precision function)."""
    if v.kind == "int":
        return StandIn("bit-exact twin", lambda t: host_model.exact_acc(t).numpy(), run,
                       lambda o: logits_from_int(v.qg, o), exact=True)
    if v.name != "fp32":
        return None

    def float_raw(t: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model.eval()(torch.from_numpy(to_device(t))).numpy()

    return StandIn("PyTorch float model", float_raw, run, lambda o: o, exact=False)


def square_route(stand_in: StandIn | None, run, x: torch.Tensor, local: bool, batch: int, forced: bool = False
                 ) -> tuple[StandIn | None, str]:
    """Who answers Square's queries: the stand-in, unless the artefact is local and faster than it on one
    batch of evaluation images (then the artefact itself: cheap *and* literal); ``forced``: the stand-in
    regardless (``--square-on stand-in``). Returns (stand-in or None, why) — the reason is logged, and the
    row's ``square_on`` column says who answered."""
    if stand_in is None:
        return None, "artefact (no host stand-in computes this variant's function)"
    if forced:
        return stand_in, f"{stand_in.name} (--square-on stand-in)"
    if not local:
        return stand_in, f"{stand_in.name} (remote artefact: only judged examples and a sample travel)"
    xb = timing_batch(x, batch)

    def cost(fn) -> float:
        fn(xb)
        t0 = time.perf_counter()
        for _ in range(3):
            fn(xb)
        return (time.perf_counter() - t0) / 3 * 1e3

    art_ms, std_ms = cost(run), cost(stand_in.raw)
    if art_ms <= std_ms:
        return None, f"artefact (faster than the {stand_in.name} here: {art_ms:.2f} vs {std_ms:.2f} ms per {batch})"
    return stand_in, f"{stand_in.name} ({std_ms:.2f} vs the artefact's {art_ms:.2f} ms per {batch} images)"


def reference_outputs(v: Variant, model: torch.nn.Module, arr: np.ndarray) -> np.ndarray:
    """The host reference's raw outputs for device-format inputs ``arr``: PyTorch's logits (float variants),
    the integer reference's int32 accumulators (integer variants)."""
    if v.kind == "float":
        with torch.no_grad():
            return model(torch.from_numpy(arr)).numpy()
    return run_integer(v.qg, arr)


def timing_batch(x: torch.Tensor, b: int) -> torch.Tensor:
    """The input timed at batch ``b``: the first ``b`` evaluation images (the first one repeated if fewer)."""
    return x[:b] if b <= len(x) else x[:1].repeat(b, 1, 1, 1)


def agreement_figures(kind: str, pairs: list[tuple[np.ndarray, np.ndarray]], to_logits) -> dict[str, Any]:
    """(artefact outputs, host reference outputs) per input set → top-1 agreement, bit-exact output rows
    (integer variants) and the largest output difference; ``to_logits`` maps raw outputs to logits."""
    agree = bitexact = total = 0
    max_diff = 0.0
    for dev_out, ref in pairs:
        bitexact += int(np.all(dev_out == ref, axis=1).sum())
        wide = (dev_out, ref) if kind == "float" else (dev_out.astype(np.int64), ref)
        max_diff = max(max_diff, float(np.abs(wide[0] - wide[1]).max()))
        agree += int((to_logits(dev_out).argmax(1) == to_logits(ref).argmax(1)).sum())
        total += len(dev_out)
    return {"agreement": round(agree / total, 4), "bitexact": round(bitexact / total, 4) if kind == "int" else "",
            "max_abs_diff": f"{max_diff:.3g}"}


def agreement_columns(v: Variant, model: torch.nn.Module, run, to_device, inputs: list[torch.Tensor]
                      ) -> dict[str, Any]:
    """The artefact (``run``: inputs → its raw outputs) against the host reference on each input set."""
    pairs = [(run(inp), reference_outputs(v, model, to_device(inp))) for inp in inputs]
    return agreement_figures(v.kind, pairs, (lambda o: o) if v.kind == "float" else
                             (lambda o: logits_from_int(v.qg, o)))


@dataclass
class Measured:
    """A variant compiled, run and attacked; its row waits for the target's timing phase (``loaded`` holds
    the libraries to time), or is already final (a not-run row: nothing to time)."""

    name: str
    row: dict[str, Any]
    layers: list[dict]
    loaded: dict[int, LoadedModule] = field(default_factory=dict)
    inputs: dict[int, np.ndarray] = field(default_factory=dict)  # batch -> the input timed at that batch
    timing: dict[str, Any] = field(default_factory=dict)  # the row's columns the timing phase fills


def measure_variant(cfg: BenchConfig, profile: TargetProfile, session: Session, v: Variant, model: torch.nn.Module,
                    data: Split, folder: Path, progress: bool, log=print, table: list[LayerTime] | None = None,
                    clock: StageClock | None = None) -> Measured:
    """Compile one variant at both batch sizes, run it on the device and measure everything but its latency
    (:func:`time_variants` times every variant of the target together, once all are attacked)."""
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
        for b in (small, large):
            loaded[b].run(inputs[b])
        memory = window.stop()

    def run(t: torch.Tensor) -> np.ndarray:  # the artefact's own raw outputs
        return outputs(loaded[large], to_device(t), large)

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
                   stand_in=stand_in, progress=progress, device=attack_device(cfg.attack_device))
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


def _timing_pending(row: dict[str, Any]) -> bool:
    """A measured row whose latency the timing phase has not filled yet (its run was stopped before)."""
    return not is_not_run(row) and str(row.get("lat_small_median_ms", "")).strip() in ("", "nan")


def reload_for_timing(cfg: BenchConfig, profile: TargetProfile, session: Session, name: str, data: Split,
                      folder: Path) -> Measured:
    """A variant an earlier session attacked but did not time: its artefacts loaded again for the timing phase."""
    kind = next(str(r["kind"]) for r in RunStore(folder, COLUMNS, LAYER_COLUMNS).rows
                if (str(r["target"]), str(r["variant"])) == (profile.name, name))
    n = min(cfg.eval_samples or len(data.x_test), len(data.x_test))
    to_device = device_input(kind)
    loaded, inputs = {}, {}
    for b in (1, cfg.batch_large):
        path = folder / "artefacts" / f"{row_tag(profile.name, name)}-b{b}.so"
        if not path.exists():
            raise ResultsError(f"{path} is gone, so {name}'s row cannot be timed; delete its row from "
                               f"{folder / 'metrics.csv'} to measure it again")
        loaded[b], inputs[b] = session.load(path), to_device(timing_batch(data.x_test[:n], b))
    return Measured(name, {}, [], loaded, inputs)


def time_variants(cfg: BenchConfig, profile: TargetProfile, session: Session, measured: list[Measured],
                  clock: StageClock, log=print) -> None:
    """The target's timing phase: every waiting variant timed together in interleaved rounds on the device
    (:func:`harness.timing.timing_phase`), the host's load sampled before each slot; fills each row's latency,
    energy, condition and load columns. ``cfg.quiet_host``: first wait (bounded) for a quiet device, or refuse."""
    waiting = [m for m in measured if m.loaded]
    if not waiting:
        return
    # whose /proc tells the load: this host's for local runs and for the emulated board (QEMU runs here); a real
    # board's through its RPC server (TVM's download cannot read procfs files there: the columns stay empty)
    local = profile.device.kind in ("local", "emulated")
    load_system = LocalSystem() if local else session.system
    scope = scope_of(profile.name, "(timing phase)")
    if cfg.quiet_host:
        with clock.time(scope, "waiting for a quiet host"):
            wait_for_quiet(load_system, local, QUIET_WAIT_S, log)
    small, large = 1, cfg.batch_large
    slots = {(m.name, b): (m.loaded[b], m.inputs[b]) for m in waiting for b in (small, large)}
    log(f"[{profile.name}] timing phase: {len(waiting)} variant(s) x batch {small} and {large}, "
        f"{cfg.latency.rounds} interleaved rounds ...")
    with clock.time(scope, "timing"):
        before = read_state(session.system)
        timed = timing_phase(slots, cfg.latency, load_system, local)
        after = read_state(session.system)
    for m in waiting:
        t = {b: timed[(m.name, b)] for b in (small, large)}
        busy = [t[b] for b in (small, large) if t[b].busy]
        conditions = conditions_columns(before, after, None)
        m.timing.update({
            **latency_columns({"small": t[small].stats, "large": t[large].stats}),
            "energy_measured_uj": measured_energy_uj(session, m.loaded[large], m.inputs[large],
                                                     t[large].stats.median_ms),
            **{k: v for k, v in conditions.items() if not k.startswith("rss_")},
            "timing_rounds": cfg.latency.rounds, "lat_small_spread_pct": t[small].spread_pct,
            "lat_large_spread_pct": t[large].spread_pct,
            "host_load": _max_or_blank(t[b].host_load for b in (small, large)),
            "other_cpu_frac": _max_or_blank(t[b].other_cpu_frac for b in (small, large)),
            "busy_host": (f"busy: other processes used up to {max(b.other_cpu_frac for b in busy):.0%} of the CPUs "
                          f"while timing (load average up to {_max_or_blank(b.host_load for b in busy)})"
                          if busy else ""),
        })
        if busy:
            log(f"[{profile.name}] {m.name}: WARNING {m.timing['busy_host']}: its latency is not the model's")


def _max_or_blank(values) -> float | str:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else ""


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
    profile = resolve_profile(cfg)  # fail on a bad target before any expensive work; the only resolve of the run
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
    earlier = _earlier_stages(folder)
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
    waiting = [str(r["variant"]) for r in store.rows if _timing_pending(r) and str(r["target"]) == profile.name]
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
            for v in variants:
                t1 = time.perf_counter()
                log(f"[{profile.name}] {v.name}: compile, run, attack ...")
                m = measure_variant(cfg, profile, session, v, model, data, folder, progress, log, table, clock)
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
        store.write_json("run.json", run_info)
        write_run_report(folder)
    run_info["stages"][RUN_SCOPE] = clock.seconds[RUN_SCOPE]
    store.write_json("run.json", run_info)
    log(f"where the time went (wall seconds; earlier sessions' variants from run.json):\n"
        f"{StageClock(run_info['stages']).summary()}")
    log(f"total this run: {clock.total():.0f} s ({clock.total() / 60:.1f} min)")
    return BenchResult(folder, store.rows, skipped)


def _earlier_stages(folder: Path) -> dict[str, dict[str, float]]:
    """Stage times a resumed run's earlier sessions recorded (their variants are not measured again)."""
    try:
        return dict(json.loads((folder / "run.json").read_text()).get("stages", {}))
    except (OSError, ValueError):
        return {}
