"""Reports: per run ``report.{md,html}`` and the cross-run ``comparison.{md,html}``.

Everything is rebuilt from the files of the run folders alone (``run.json``, ``metrics.csv``,
``layers.csv``), so a report can be regenerated at any time and never disagrees with the data.

Each report is one list of blocks rendered twice: as Markdown (plots saved as PNG files next to it,
so it reads well on a forge) and as a self-contained HTML page (plots embedded as base64 PNG data
URIs, inline CSS, no script, no external resource — it opens from a mail attachment or an archive).

How a figure was obtained is part of every table and every plot: ``measured_as`` is ``native``,
``emulated`` (QEMU: a functional check, whose latency is never put on a native latency axis) or
``not run: <reason>`` (listed with empty figures, never plotted); energy is a proxy model unless
``energy_measured_uj`` was filled by a real sensor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from harness import notes, plots
from harness.document import Block, md_table, write_document
from harness.results import ResultsError, row_tag
from harness.stage_report import stage_blocks

SUMMARY_COLUMNS = ["target", "measured_as", "variant", "avg_weight_bits", "lat_small_median_ms", "lat_small_p90_ms",
                   "lat_small_p99_ms", "lat_large_median_ms", "thr_large_ips", "clean_acc", "robust_acc",
                   "robust_ci_lo", "robust_ci_hi", "attack_preset", "gradient_masking", "agreement", "bitexact",
                   "energy_proxy_uj", "weight_bytes", "schedule"]

# Figures first (latency, then accuracy), sizes and provenance after; device cells are short (harness.notes).
COMPARISON_COLUMNS = ["target", "measured_as", "device", "variant", "avg_weight_bits", "lat_small_median_ms",
                      "lat_small_p90_ms", "lat_large_median_ms", "thr_large_ips", "clean_acc", "robust_acc",
                      "robust_ci_lo", "robust_ci_hi", "energy_proxy_uj", "energy_measured_uj", "weight_bytes",
                      "artefact_bytes", "attack_preset", "gradient_masking", "agreement", "legacy_pgd20_acc",
                      "schedule", "run"]

# Figures that only a run on the device can produce: always empty in a table for a row not run, so a stale or
# placeholder number can never pass for a measurement. Figures that need no device (sizes, op counts, the energy
# proxy, compile time) are kept: they are as true for a row not run as for any other.
MEASURED_COLUMNS = {"lat_small_median_ms", "lat_small_p90_ms", "lat_small_p99_ms", "lat_small_mean_ms",
                    "lat_small_std_ms", "thr_small_ips", "lat_large_median_ms", "lat_large_p90_ms", "lat_large_p99_ms",
                    "lat_large_mean_ms", "lat_large_std_ms", "thr_large_ips", "governor", "freq_mhz_before",
                    "freq_mhz_after", "temp_c_before", "temp_c_after", "throttled_before", "throttled_after",
                    "rss_peak_mb", "rss_delta_mb",
                    "clean_acc", "clean_ci_lo", "clean_ci_hi", "robust_acc", "robust_ci_lo", "robust_ci_hi",
                    "per_attack", "gradient_masking", "sanity", "eps_curve", "agreement", "bitexact", "max_abs_diff",
                    "n_eval", "energy_measured_uj"}

RUN_PLOTS_DIR = "plots"
COMPARISON_PLOTS_DIR = "comparison-plots"

_HOW_MEASURED = ("`measured_as` says how each row was obtained: `native` on the device itself, `emulated` under "
                 "QEMU (a functional check: its latency is never compared with native rows, and is plotted in its "
                 "own panel), `not run: <reason>` where no device was available (listed with empty measured "
                 "figures — sizes and the energy proxy need no device and are kept — and never plotted). Energy is "
                 "a proxy model (README: *Energy*) unless `energy_measured_uj` is filled from a real sensor.")


def is_not_run(measured_as: object) -> bool:
    return plots.measured_kind(measured_as) == "not run"


def blank_not_run(df: pd.DataFrame) -> pd.DataFrame:
    """Rows not run keep their identity, reason and device-free figures; every measured figure is emptied."""
    if df.empty or "measured_as" not in df.columns:
        return df
    out = df.copy()
    mask = out["measured_as"].map(is_not_run)
    for c in out.columns:
        if c in MEASURED_COLUMNS:
            out[c] = out[c].astype(object)
            out.loc[mask, c] = ""
    return out


def summary_table(df: pd.DataFrame) -> str:
    return md_table(blank_not_run(df[[c for c in SUMMARY_COLUMNS if c in df.columns]]))


# --- per run ------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else pd.DataFrame()


def _model_context(info: dict) -> str:
    cfg = info.get("config", {})
    arch = cfg.get("train", {}).get("arch", "?")
    eps = (cfg.get("evaluation") or cfg.get("attack") or {}).get("eps")  # "attack": runs before the ensemble
    return f"{cfg.get('dataset', '?')} · {arch}" + (f" · ε={eps:.4g}" if isinstance(eps, (int, float)) else "")


LEGACY_PRESET = "legacy PGD-20: not comparable"


def _measured_kind(df: pd.DataFrame) -> str:
    """native / emulated label for a run's per-layer latency figure (one target per run folder)."""
    kinds = sorted({plots.measured_kind(m) for m in df.get("measured_as", pd.Series(dtype=str))} - {"not run"})
    return ", ".join(kinds)


def legacy_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Runs made before the attack ensemble reported PGD-20 alone as ``pgd_acc``: that figure overstates
    robustness by 15-20 points on the default model, so it is kept apart (``legacy_pgd20_acc``), never shown
    or plotted as a robust accuracy."""
    if "pgd_acc" in df.columns and "robust_acc" not in df.columns:
        df = df.rename(columns={"pgd_acc": "legacy_pgd20_acc"})
        df["robust_acc"] = ""
        df["attack_preset"] = LEGACY_PRESET
        df["gradient_masking"] = ""  # decided by a fixed 5-point threshold on 100 images: not a verdict
    return df


def per_image(folder: Path) -> dict[tuple[str, str], pd.DataFrame]:
    """(target, variant) -> per-image outcomes of one run (``per_image/<target>-<variant>.csv``)."""
    out = {}
    metrics = _read_csv(folder / "metrics.csv")
    for _, r in metrics.iterrows():
        path = folder / "per_image" / f"{row_tag(str(r['target']), str(r['variant']))}.csv"
        if path.exists():
            out[(str(r["target"]), str(r["variant"]))] = pd.read_csv(path)
    return out


def compare_variants(folder: Path, a: str, b: str, target: str | None = None) -> pd.DataFrame:
    """McNemar's exact test of two variants of one run on the same images, clean and robust."""
    from laaq.stats import paired_test

    outcomes = per_image(folder)
    targets = sorted({t for t, _ in outcomes})
    tgt = target or (targets[0] if len(targets) == 1 else None)
    if tgt is None:
        raise ResultsError(f"{folder} holds several targets {targets}: name one with --target")
    missing = [v for v in (a, b) if (tgt, v) not in outcomes]
    if missing:
        have = ", ".join(v for t, v in outcomes if t == tgt) or "none"
        raise ResultsError(f"no per-image outcomes for {', '.join(missing)} on {tgt} in {folder} (have: {have})")
    da, db = outcomes[(tgt, a)], outcomes[(tgt, b)]
    if not (da["index"].to_numpy() == db["index"].to_numpy()).all():
        raise ResultsError(f"{a} and {b} were evaluated on different images: no paired test")
    rows = []
    for col in ("clean", "robust"):
        t = paired_test(da[col].to_numpy(bool), db[col].to_numpy(bool))
        rows.append({"target": tgt, "A": a, "B": b, "on": col, "acc_A": round(float(da[col].mean()), 4),
                     "acc_B": round(float(db[col].mean()), 4), "only_A_right": t.only_a, "only_B_right": t.only_b,
                     "n": t.n, "mcnemar_p": f"{t.p_value:.3g}", "verdict": t.verdict(a, b)})
    return pd.DataFrame(rows)


def paired_table(folder: Path) -> pd.DataFrame:
    """Every pair of variants of the same target in a run, robust accuracy, McNemar's exact test."""
    outcomes = per_image(folder)
    frames = []
    keys = list(outcomes)
    for i, (t, a) in enumerate(keys):
        for t2, b in keys[i + 1 :]:
            if t2 == t and len(outcomes[(t, a)]) == len(outcomes[(t, b)]):
                d = compare_variants(folder, a, b, t)
                frames.append(d[d["on"] == "robust"])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _plot_blocks(made: list[plots.Plot | None], missing: str) -> list[Block]:
    got = [Block("plot", p) for p in made if p is not None]
    return got or [Block("p", missing)]


def _robustness_blocks(folder: Path, df: pd.DataFrame, cfg: dict, context: str) -> list[Block]:
    """Per variant: the ensemble read-out, the sanity checks, the ε-curve; then paired tests between variants."""
    if df.empty or "per_attack" not in df.columns:
        return []
    measured = blank_not_run(df)
    measured = measured[measured["per_attack"].astype(str) != ""]
    if measured.empty:
        return []
    n_curve = (cfg.get("evaluation") or {}).get("preset", {}).get("curve_samples")
    n_curve = min(int(n_curve), int(cfg.get("eval_samples") or n_curve)) if n_curve else None
    blocks = [Block("h2", "Robustness: attack ensemble and sanity checks"),
              Block("p", "`per_attack`: robust accuracy after each member, cumulatively (each member attacks the "
                         "survivors of the earlier ones). `sanity`: the checks of Carlini et al. 2019 — the eps-curve "
                         "must fall to ~0; a stronger white-box attack (2x steps, +1 restart), the black-box Square on "
                         "the artefact and a transfer attack from the float model must not break significantly more "
                         "images than the ensemble (McNemar's exact test on the per-image outcomes, p < 0.05)."),
              Block("table", measured[["target", "variant", "robust_acc", "robust_ci_lo", "robust_ci_hi",
                                       "per_attack", "gradient_masking", "sanity"]])]
    curve = plots.eps_curves(measured, context, n_curve)
    if curve is not None:
        blocks.append(Block("plot", curve))
    pairs = paired_table(folder)
    if len(pairs):
        blocks += [Block("h3", "Variants compared on the same images (robust accuracy)"),
                   Block("p", "McNemar's exact test on paired per-image outcomes (`per_image/*.csv`): only the images "
                              "one variant gets right and the other wrong count. Any pair, clean too: "
                              "`laaq-bench compare RUN A B`."),
                   Block("table", pairs.drop(columns=["on"]))]
    return blocks


def _warning_blocks(rows: pd.DataFrame) -> list[Block]:
    lines = notes.warning_lines(rows)
    return [Block("p", notes.WARNING_INTRO), Block("ul", lines)] if lines else []


def write_run_report(folder: Path) -> Path:
    """``report.md`` + ``report.html`` (+ ``plots/*.png``) for one run folder, from its files alone."""
    try:
        info = json.loads((folder / "run.json").read_text())
        cfg, env, tgt = info["config"], info["environment"], info["target"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResultsError(f"{folder / 'run.json'} is missing or unreadable ({type(e).__name__}: {e}); re-run "
                           "the bench command that made this folder (finished rows are kept) or move it away") from e
    df = legacy_columns(_read_csv(folder / "metrics.csv"))
    layers = _read_csv(folder / "layers.csv")
    measured = ", ".join(sorted(set(df["measured_as"]))) if len(df) else "nothing yet"
    context = f"{tgt['name']} · {_model_context(info)}"
    blocks = [
        Block("h1", f"laaq-bench run `{folder.name}`"),
        Block("p", f"Target **{tgt['name']}** ({tgt['description']}); model {_model_context(info)}; figures are "
                   f"**{measured}**" + (" — emulated timings are smoke tests, not performance." if "emulated" in
                                       measured else ".")),
        Block("h2", "How this was measured"),
        Block("ul", [
            f"Latency: TVM `time_evaluator` on the device; {info['latency_protocol']}; batch "
            f"{df['batch_small'].iloc[0] if len(df) and 'batch_small' in df else 1} and {cfg['batch_large']}; "
            f"{tgt['threads']} runtime threads. Device conditions (`governor`, `freq_mhz_*`, `temp_c_*`, "
            f"`throttled_*` in metrics.csv, before and after timing): "
            f"{(info.get('device_state') or {}).get('exposed', 'not recorded (an older run)')}; peak memory "
            f"(`rss_*`): {(info.get('device_state') or {}).get('memory', 'not recorded')}.",
            f"Accuracy: from the compiled artefact's outputs on {cfg['eval_samples']} test samples of "
            f"`{cfg['dataset']}`, each with its Wilson 95 % interval (`*_ci_lo`/`*_ci_hi`). Robust accuracy: "
            f"{info.get('attack', 'see run.json')}. Gradient members attack the exact host twin (integer variants) "
            "or the float model; Square is black-box, its queries answered by the artefact or by a stand-in that "
            "computes the same function (`square_on` says which, with the sampled check against the artefact); "
            "every adversarial example is judged on the artefact's outputs and an image counts as robust only if "
            "it survives every member. "
            "`agreement`: argmax of artefact = host reference on clean and worst-case inputs; `bitexact`: whole "
            "output vector identical.",
            f"Energy: {info.get('energy_source', 'proxy model')}.",
            f"Environment: {env['host_cpu']} ({env['host_cores']} cores), Python {env['python']}, "
            f"torch {env['torch']}, TVM {env['tvm']}.",
        ]),
        Block("h2", "Variants"),
        Block("table", blank_not_run(df[[c for c in SUMMARY_COLUMNS if c in df.columns]])) if len(df)
        else Block("p", "(no rows yet)"),
        *_warning_blocks(df),
        Block("h2", "Figures"),
    ]
    blocks += _plot_blocks([plots.latency_vs_robust(df, context), plots.energy_vs_robust(df, context),
                            plots.layer_bits(layers, context),
                            plots.layer_latency(layers, context, _measured_kind(df))],
                           "(no measured rows: nothing to plot)")
    blocks += _robustness_blocks(folder, df, cfg, context)
    blocks += stage_blocks(info.get("stages") or {}, context)
    if len(layers):
        blocks += [Block("h2", "Per layer"), Block("table", layers.drop(columns=["target"], errors="ignore"))]
    blocks.append(Block("p", "Every column is documented in results/README.md and README.md (*Results columns*)."))
    out = folder / "report.md"
    write_document(blocks, out, RUN_PLOTS_DIR, f"laaq-bench run {folder.name}")
    return out


# --- across runs -------------------------------------------------------------------------------------


def collect(root: Path) -> pd.DataFrame:
    """Every row of every run under ``root``, with the run folder's name and its model (data · arch · ε)."""
    frames = []
    for m in sorted(root.glob("*/metrics.csv")):
        df = legacy_columns(pd.read_csv(m, dtype=str, keep_default_na=False))
        df["run"] = m.parent.name
        try:
            df["model"] = _model_context(json.loads((m.parent / "run.json").read_text()))
        except (OSError, ValueError, AttributeError):
            df["model"] = "unknown model (run.json unreadable)"
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*COMPARISON_COLUMNS, "model"])
    out = pd.concat(frames, ignore_index=True).fillna("")
    if "legacy_pgd20_acc" in out.columns and not (out["legacy_pgd20_acc"] != "").any():
        out = out.drop(columns="legacy_pgd20_acc")
    return out


def device_key(device: object, measured_as: object) -> str:
    """The device as far as "the same device" goes: an emulated board's RPC port changes on every run and
    a row not run appends what was verified (`` | compiled, ...``); neither makes it another device."""
    if plots.measured_kind(measured_as) == "emulated":
        return "emulated"
    return str(device).split(" | ")[0].strip()


def latest_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per (model, target, device, variant): the most recent measurement; returns (rows, dropped).

    A "not run" row never hides a measured one: measured rows win over rows not run, then the latest
    timestamp wins.
    """
    if df.empty:
        return df, 0
    d = df.copy()
    d["_device"] = [device_key(dv, m) for dv, m in zip(d["device"], d["measured_as"], strict=True)]
    d["_measured"] = (~d["measured_as"].map(is_not_run)).astype(int)
    d["_ts"] = d["timestamp"] if "timestamp" in d.columns else ""
    d["_order"] = range(len(d))
    d = d.sort_values(["_measured", "_ts", "_order"])
    keep = d.drop_duplicates(["model", "target", "_device", "variant"], keep="last").sort_values("_order")
    return keep.drop(columns=["_measured", "_ts", "_order", "_device"]), len(df) - len(keep)


def per_target_plans(root: Path, rows: pd.DataFrame, variant: str = "laaq") -> pd.DataFrame:
    """``variant``'s per-layer widths on every target of ``rows`` (the latest row each), side by side — with
    the layer's measured latency where the run measured its table: a latency-aware search gives each board
    its own plan, and this is where one sees it. Empty when no row of that variant has a layers.csv."""
    cols: dict[str, pd.Series] = {}
    for r in rows[rows["variant"].astype(str) == variant].itertuples():
        try:
            lay = pd.read_csv(root / str(r.run) / "layers.csv", dtype=str, keep_default_na=False)
        except OSError:
            continue
        lay = lay[(lay["target"] == str(r.target)) & (lay["variant"] == variant)].set_index("layer")
        if lay.empty:
            continue
        label = f"{r.target} ({plots.measured_kind(r.measured_as)})"
        cols[f"{label} bits"] = lay["weight_bits"]
        if "latency_ms" in lay.columns and (lay["latency_ms"] != "").any():
            cols[f"{label} ms"] = lay["latency_ms"]
    if not cols:
        return pd.DataFrame()
    return pd.DataFrame(cols).fillna("").rename_axis("layer").reset_index()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def write_comparison(root: Path) -> Path:
    """``comparison.md`` + ``comparison.html`` (+ ``comparison-plots/*.png``): one row per (target, device,
    variant) for each model, with plots that keep native, emulated and not-run rows apart."""
    df, dropped = latest_rows(collect(root))
    blocks = [Block("h1", "laaq-bench: per-hardware comparison"), Block("p", _HOW_MEASURED)]
    if df.empty:
        blocks.append(Block("p", "(no runs found)"))
    else:
        blocks += [Block("h2", "Targets and how they were measured"), Block("ul", notes.overview(df))]
        if dropped:
            blocks.append(Block("p", f"{dropped} older or not-run duplicate row(s) of the same (model, target, device, "
                                     "variant) left out; the latest measurement is shown."))
        for model, g in df.groupby("model", sort=False):
            table = notes.short_cells(blank_not_run(g[[c for c in COMPARISON_COLUMNS if c in g.columns]]))
            blocks += [Block("h2", f"Model: {model}"), Block("table", table), *_warning_blocks(g)]
            if where := notes.provenance(g):
                blocks += [Block("p", "Where and how each target was measured, in full:"), Block("ul", where)]
            plans = per_target_plans(root, g)
            if len(plans):
                blocks += [Block("h3", "LAAQ's plan on each target"),
                           Block("p", "Weight bits per layer of each target's `laaq` row (its run's layers.csv), and "
                                      "the layer's latency measured alone on that target where the run measured its "
                                      "table (`--layer-times` / `--latency-budget`; emulated tables rank nothing). "
                                      "The same bits on every target mean no per-target budget was given."),
                           Block("table", plans)]
            slug = _slug(model)
            blocks += _plot_blocks([plots.latency_vs_robust(g, str(model), f"{slug}-latency_vs_robust"),
                                    plots.energy_vs_robust(g, str(model), f"{slug}-energy_vs_robust")],
                                   "(no measured rows for this model: nothing to plot)")
    for perf in sorted(root.glob("perf-*/perf.csv")):  # `make perf` output for a target, if any
        p = pd.read_csv(perf, dtype=str, keep_default_na=False)
        cols = [c for c in ("model", "batch", "peer", "median_ms", "p90_ms", "ratio_to_fastest", "gmac_s",
                            "frac_int8_peak", "threads", "note") if c in p.columns]
        blocks += [Block("h2", f"Peers timed side by side: {perf.parent.name.removeprefix('perf-')}"),
                   Block("p", "From `make perf` (benchmarks/peers.py): same weights, inputs and threads, peers timed "
                              "in interleaved rounds on this machine (native); `ratio_to_fastest` is against the "
                              "fastest peer at that model and batch, `frac_int8_peak` against the target file's "
                              "`peak_int8_gmacs`."),
                   Block("table", p[cols])]
    blocks.append(Block("p", "Columns: results/README.md. Regenerate with `laaq-bench report <results dir>` "
                             "(or `make report`)."))
    out = root / "comparison.md"
    write_document(blocks, out, COMPARISON_PLOTS_DIR, "laaq-bench: per-hardware comparison")
    return out
