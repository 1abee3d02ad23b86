"""Reports: a per-run ``report.md`` and the cross-run comparison, each saying how figures were measured."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.results import atomic_write_text

SUMMARY_COLUMNS = ["target", "measured_as", "variant", "avg_weight_bits", "lat_small_median_ms", "lat_small_p90_ms",
                   "lat_large_median_ms", "thr_large_ips", "clean_acc", "pgd_acc", "agreement", "bitexact",
                   "energy_proxy_uj", "weight_bytes"]


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def summary_table(df: pd.DataFrame) -> str:
    return _md_table(df[[c for c in SUMMARY_COLUMNS if c in df.columns]])


def write_run_report(folder: Path) -> Path:
    """``report.md`` for one run folder, from its files alone (so it can be rebuilt any time)."""
    info = json.loads((folder / "run.json").read_text())
    df = pd.read_csv(folder / "metrics.csv", dtype=str, keep_default_na=False)
    layers_path = folder / "layers.csv"
    layers = pd.read_csv(layers_path, dtype=str, keep_default_na=False) if layers_path.exists() else pd.DataFrame()
    cfg, env, tgt = info["config"], info["environment"], info["target"]
    measured = ", ".join(sorted(set(df["measured_as"]))) if len(df) else "nothing yet"
    lines = [
        f"# laaq-bench run `{folder.name}`",
        "",
        f"Target **{tgt['name']}** ({tgt['description']}); figures are **{measured}**"
        + (" — emulated timings are smoke tests, not performance." if "emulated" in measured else "."),
        "",
        "## How this was measured",
        f"- Latency: TVM `time_evaluator` on the device; {info['latency_protocol']}; batch "
        f"{df['batch_small'].iloc[0] if len(df) else 1} and {cfg['batch_large']}; {tgt['threads']} runtime threads.",
        f"- Accuracy: from the compiled artefact's outputs on {cfg['eval_samples']} test samples of "
        f"`{cfg['dataset']}`; PGD examples crafted on the exact host twin (integer variants) or the float model, "
        "then run through the artefact. `agreement`: argmax of artefact = host reference; `bitexact`: whole "
        "output vector identical.",
        f"- Energy: {info.get('energy_source', 'proxy model')}.",
        f"- Environment: {env['host_cpu']} ({env['host_cores']} cores), Python {env['python']}, "
        f"torch {env['torch']}, TVM {env['tvm']}.",
        "",
        "## Variants",
        summary_table(df) if len(df) else "(no rows yet)",
        "",
    ]
    if len(layers):
        lines += ["## Per layer", _md_table(layers.drop(columns=["target"])), ""]
    lines += ["Every column is documented in README.md (section *Results columns*).", ""]
    out = folder / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out


COMPARISON_COLUMNS = ["target", "measured_as", "device", "variant", "avg_weight_bits", "lat_small_median_ms",
                      "lat_small_p90_ms", "lat_large_median_ms", "thr_large_ips", "energy_proxy_uj",
                      "energy_measured_uj", "weight_bytes", "clean_acc", "pgd_acc", "agreement", "run"]


def collect(root: Path) -> pd.DataFrame:
    """Every row of every run under ``root``, with the run folder's name."""
    frames = []
    for m in sorted(root.glob("*/metrics.csv")):
        df = pd.read_csv(m, dtype=str, keep_default_na=False)
        df["run"] = m.parent.name
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARISON_COLUMNS)


def write_comparison(root: Path) -> Path:
    """``comparison.md``: one row per (target, device, variant) across runs; emulated rows labelled."""
    df = collect(root)
    table = df[[c for c in COMPARISON_COLUMNS if c in df.columns]]
    lines = ["# laaq-bench: per-hardware comparison", "",
             "One row per (target, device, variant, run). `measured_as` says how each latency was obtained: "
             "`native` on the device itself, `emulated` under QEMU (a functional check — never compare its "
             "latency with native rows), `not run` where no device was available. Energy is a proxy model "
             "(README: *Energy*) unless `energy_measured_uj` is filled from a real sensor.", "",
             _md_table(table), ""]
    out = root / "comparison.md"
    atomic_write_text(out, "\n".join(lines))
    return out
