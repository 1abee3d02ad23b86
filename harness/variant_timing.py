"""Between a variant's attack and its row's latency: what waits for the target's timing phase, and the phase.

``bench`` writes each variant's row as soon as it is attacked (accuracy safe on disk), keeps its loaded
libraries in a :class:`Measured`, and, once every variant of the target is done, :func:`time_variants` times
them together (:func:`harness.timing.timing_phase`) and fills their latency, energy, condition and load
columns. A row an earlier, stopped session attacked but did not time is re-loaded by :func:`reload_for_timing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.devices import Session
from harness.devices.base import LoadedModule
from harness.devices.system import LocalSystem, read_state
from harness.profile import TargetProfile
from harness.results import ResultsError, RunStore, row_tag
from harness.rows import COLUMNS, LAYER_COLUMNS, conditions_columns, is_not_run, latency_columns
from harness.sensors import measured_energy_uj
from harness.stages import StageClock, scope_of
from harness.timing import QUIET_WAIT_S, timing_phase, wait_for_quiet
from laaq.data import Split
from laaq.quant.quantizers import quantize_input

if TYPE_CHECKING:
    from harness.bench import BenchConfig


def timing_batch(x: torch.Tensor, b: int) -> torch.Tensor:
    """The input timed at batch ``b``: the first ``b`` evaluation images (the first one repeated if fewer)."""
    return x[:b] if b <= len(x) else x[:1].repeat(b, 1, 1, 1)


def device_input(kind: str):
    """float images → the array an artefact of this kind takes: float32, or the uint8 codes of an integer one."""
    if kind == "float":
        return lambda t: t.numpy().astype(np.float32)
    return lambda t: quantize_input(t).numpy()


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


def timing_pending(row: dict[str, Any]) -> bool:
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
            "number": t[small].number if t[small].number == t[large].number else f"{t[small].number}/{t[large].number}",
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
