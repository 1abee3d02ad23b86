"""A result row: its columns, and how one is assembled — measured, or compiled but not run.

One home for the row so that a measured row and a not-run row cannot drift apart: both start from
:func:`static_columns` (what needs no device: plan, sizes, op counts, the energy proxy, compile
time); a measured row adds latency, accuracy and agreement. README.md documents every column.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

import torch

from harness import energy

if TYPE_CHECKING:
    from harness.compile import Artefact
    from harness.devices.base import Session
    from harness.devices.system import DeviceState, PeakMemory
    from harness.layer_latency import LayerTime
    from harness.measure import LatencyStats
    from harness.profile import TargetProfile
    from harness.variants import Variant
    from laaq.robustness import RobustResult

# Every column of metrics.csv, in order.
COLUMNS = [
    "target", "measured_as", "device", "cpu", "variant", "kind", "plan", "avg_weight_bits", "act_bits",
    "batch_small", "lat_small_median_ms", "lat_small_p90_ms", "lat_small_p99_ms", "lat_small_mean_ms",
    "lat_small_std_ms", "thr_small_ips", "batch_large", "lat_large_median_ms", "lat_large_p90_ms", "lat_large_p99_ms",
    "lat_large_mean_ms", "lat_large_std_ms", "thr_large_ips", "clean_acc", "clean_ci_lo", "clean_ci_hi", "robust_acc",
    "robust_ci_lo", "robust_ci_hi", "attack_preset", "per_attack", "gradient_masking", "sanity", "eps_curve",
    "agreement", "bitexact", "max_abs_diff", "n_eval", "attack", "attack_s", "square_on", "macs", "bops",
    "weight_bytes", "artefact_bytes", "energy_proxy_uj", "energy_measured_uj", "threads", "warmup", "number", "repeat",
    # the measurement's conditions: cool-down, pinning, and the device's state around the timing
    "cooldown_ms", "pinned_cpus", "governor", "freq_mhz_before", "freq_mhz_after", "temp_c_before", "temp_c_after",
    "throttled_before", "throttled_after", "rss_peak_mb", "rss_delta_mb",
    # the timing phase (harness.timing): rounds, spread of the round medians, and the host's load while timing
    "timing_rounds", "lat_small_spread_pct", "lat_large_spread_pct", "host_load", "other_cpu_frac", "busy_host",
    "compile_s", "schedule", "timestamp",
]
LAYER_COLUMNS = ["target", "variant", "layer", "kind", "shape", "macs", "weight_bits", "clip", "scale_min",
                 "scale_max", "act_scale", "weight_bytes", "energy_proxy_pj", "latency_ms"]


def is_not_run(row: dict[str, Any]) -> bool:
    """A row for a variant compiled and verified but not run (e.g. no CUDA device): no measured figure in it."""
    return str(row.get("measured_as", "")).startswith("not run")


def energy_totals(profile: TargetProfile, v: Variant, model: torch.nn.Module) -> dict[str, float]:
    graph = v.graph(model)
    return energy.model_totals(energy.layer_costs(graph, v.weight_bits(graph), 8, profile.energy))


def static_columns(profile: TargetProfile, v: Variant, model: torch.nn.Module, arts: dict[int, Artefact]
                   ) -> dict[str, Any]:
    """The columns that need no device: variant, plan, bit widths, batch sizes, sizes, op counts, energy proxy."""
    graph = v.graph(model)
    totals = energy_totals(profile, v, model)
    small, large = min(arts), max(arts)
    return {
        "target": profile.name, "cpu": profile.cpu, "variant": v.name, "kind": v.kind,
        "plan": v.plan.name if v.plan else f"float{v.float_bits}",
        "avg_weight_bits": round(v.plan.avg_bits({nd.name: nd.weight.size for nd in graph.weighted()}), 3)
        if v.plan else v.float_bits,
        "act_bits": 8 if v.plan else v.float_bits, "batch_small": small, "batch_large": large,
        "macs": totals["macs"], "bops": totals["bops"], "weight_bytes": totals["weight_bytes"],
        "artefact_bytes": arts[small].size_bytes, "energy_proxy_uj": round(totals["energy_proxy_uj"], 4),
        "compile_s": round(sum(a.compile_s for a in arts.values()), 2), "schedule": schedule(profile, v, arts),
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def schedule(profile: TargetProfile, v: Variant, arts: dict[int, Artefact]) -> str:
    """How the kernels were scheduled — so that a speed-up over an *untuned* float row is read as such:
    ``tuned`` (a MetaSchedule database applied at every batch size), ``untuned`` (TVM's defaults),
    ``+hand`` (a fixed hand schedule, no tuning: integer convolutions on the target's blocked scheme; fp32
    convolutions and dense layers on :mod:`harness.backend.float_schedule`'s NCHWc schedule, applied when no
    tuning database exists), ``dlight`` (GPU rules)."""
    if profile.backend != "cpu":
        return "dlight"
    base = "tuned" if all(a.tuned for a in arts.values()) else "untuned"
    hand = (v.kind == "int" and profile.scheme is not None) or (v.name == "fp32" and base == "untuned")
    return f"{base}+hand" if hand else base


def robust_columns(rob: RobustResult) -> dict[str, Any]:
    """The accuracy columns of a row: figures with Wilson 95 % intervals, members, checks, ε-curve."""
    (c_lo, c_hi), (r_lo, r_hi) = rob.interval("clean"), rob.interval("robust")
    return {"clean_acc": round(rob.clean_acc, 4), "clean_ci_lo": round(c_lo, 4), "clean_ci_hi": round(c_hi, 4),
            "robust_acc": round(rob.robust_acc, 4), "robust_ci_lo": round(r_lo, 4), "robust_ci_hi": round(r_hi, 4),
            "attack_preset": rob.config.preset.name, "per_attack": rob.members_str(),
            "gradient_masking": rob.gradient_masking, "sanity": rob.checks_str(), "eps_curve": rob.curve_str()}


def latency_columns(lat: dict[str, LatencyStats]) -> dict[str, Any]:
    """``lat_{small,large}_*`` and ``thr_*`` from the latency of each batch size (keys "small", "large")."""
    row: dict[str, Any] = {}
    for tag, s in lat.items():
        row.update({f"lat_{tag}_median_ms": round(s.median_ms, 4), f"lat_{tag}_p90_ms": round(s.p90_ms, 4),
                    f"lat_{tag}_p99_ms": round(s.p99_ms, 4), f"lat_{tag}_mean_ms": round(s.mean_ms, 4),
                    f"lat_{tag}_std_ms": round(s.std_ms, 4), f"thr_{tag}_ips": round(s.throughput, 1)})
    return row


def _blank(value: object) -> object:
    """None (the device does not expose it) becomes an empty cell — never a zero."""
    return "" if value is None else value


def conditions_columns(before: DeviceState, after: DeviceState, memory: PeakMemory | None) -> dict[str, Any]:
    """The device's state around the timing (governor, clock, temperature, throttling word as hex) and the
    process's peak memory; empty where the device does not expose a figure."""
    def hexword(v: int | None) -> str:
        return "" if v is None else hex(v)

    return {"governor": _blank(after.governor or before.governor),
            "freq_mhz_before": _blank(before.freq_mhz), "freq_mhz_after": _blank(after.freq_mhz),
            "temp_c_before": _blank(before.temp_c), "temp_c_after": _blank(after.temp_c),
            "throttled_before": hexword(before.throttled), "throttled_after": hexword(after.throttled),
            "rss_peak_mb": memory.peak_mb if memory else "", "rss_delta_mb": memory.delta_mb if memory else ""}


def not_run_row(profile: TargetProfile, session: Session, v: Variant, model: torch.nn.Module,
                arts: dict[int, Artefact]) -> dict[str, Any]:
    """A results row for a variant that was compiled, exported and verified but could not run.

    Only figures that do not need the device are filled (sizes, op counts, the energy *proxy*,
    compile time); latency, accuracy, agreement and measured energy stay empty."""
    from harness.backend.cuda_library import describe_manifest, read_manifest

    checked = "; ".join(f"b{b}: {describe_manifest(read_manifest(a.path))}" for b, a in sorted(arts.items()))
    return {**static_columns(profile, v, model, arts), "measured_as": session.measured_as,
            "device": f"{session.where} | compiled, exported, verified: {checked}"}


def layer_rows(profile: TargetProfile, v: Variant, model: torch.nn.Module, table: list[LayerTime] | None = None
               ) -> list[dict[str, Any]]:
    """One row per weighted layer of a variant: shape, MACs, bits, clip, scales, bytes, energy proxy, and the
    layer's measured latency at its width (batch 1, own module; empty unless the table was measured)."""
    graph = v.graph(model)
    ms = {(t.layer, t.bits): t.median_ms for t in table or ()}
    rows = []
    for c in energy.layer_costs(graph, v.weight_bits(graph), 8, profile.energy):
        q = v.qg.qnodes[c.name] if v.qg else None
        clip = (q.setting.describe() if q.setting.groups else q.setting.clip) if q else ""  # grouped: per group
        rows.append({
            "target": profile.name, "variant": v.name, "layer": c.name, "kind": c.kind,
            "shape": "x".join(map(str, graph.node(c.name).weight.shape)), "macs": c.macs, "weight_bits": c.w_bits,
            "clip": clip, "scale_min": f"{q.w_scale.min():.4g}" if q else "",
            "scale_max": f"{q.w_scale.max():.4g}" if q else "", "act_scale": f"{q.s_out:.4g}" if q else "",
            "weight_bytes": c.weight_bytes, "energy_proxy_pj": round(c.energy_pj, 1),
            "latency_ms": ms.get((c.name, c.w_bits), ""),
        })
    return rows
