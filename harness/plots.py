"""Figures for the reports, as PNG bytes: each one says on its face how its numbers were obtained.

Rules every figure here follows, because a plot is read without the table next to it:

* Rows whose ``measured_as`` starts with ``not run`` are never plotted (they have no figures).
* Emulated latencies (QEMU) never share an axis with native ones: they get their own panel, titled
  as a functional smoke test — an emulator's speed says nothing about a board's.
* The energy axis is labelled a *proxy* (a model, not a measurement); measured energy, when a real
  sensor filled ``energy_measured_uj``, gets its own panel.

Figures are drawn with :class:`matplotlib.figure.Figure` directly (no pyplot global state, no GUI
backend), and PNGs are written without a timestamp so an unchanged run yields an unchanged file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# One colour per (target, device) group, in order of appearance; markers per measurement kind.
_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
            "#bcbd22"]
_MARKERS = {"native": "o", "emulated": "s"}
_PANEL_TITLES = {
    "native": "native: timed on the device itself",
    "emulated": "emulated (QEMU): functional smoke test, NOT performance",
}


@dataclass(frozen=True)
class Plot:
    """A rendered figure: ``name`` is its file stem, ``caption`` says what was measured and how.

    ``plotted`` lists every point drawn as (panel, target, device, variant), so a test can check
    what went on which axis without reading pixels.
    """

    name: str
    title: str
    caption: str
    png: bytes
    plotted: tuple[tuple[str, str, str, str], ...] = ()


def measured_kind(measured_as: object) -> str:
    """``native`` / ``emulated`` / ``not run`` (any ``not run: reason``) / the raw text otherwise."""
    s = str(measured_as).strip().lower()
    if s.startswith("not run"):
        return "not run"
    if s.startswith("emulated"):
        return "emulated"
    if s.startswith("native"):
        return "native"
    return s or "unknown"


def plottable(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that carry figures: everything except ``not run`` rows, with numbers parsed.

    Parsing here (not in the caller) keeps the CSVs' text intact for the tables, where a blank must
    stay a blank rather than become ``nan``.
    """
    out = df.copy()
    for c in ("target", "device", "variant", "measured_as"):
        if c not in out.columns:
            out[c] = ""
    out = out[out["measured_as"].map(measured_kind) != "not run"].copy()
    for c in ("lat_small_median_ms", "lat_small_p90_ms", "thr_large_ips", "clean_acc", "robust_acc", "robust_ci_lo",
              "robust_ci_hi", "energy_proxy_uj", "energy_measured_uj", "avg_weight_bits"):
        out[c] = pd.to_numeric(out[c], errors="coerce") if c in out.columns else np.nan
    return out


def pareto_front(lat: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both axes (lower latency, higher accuracy).

    Sorted by latency; ties in latency keep only the most accurate point.
    """
    order = np.lexsort((-acc, lat))
    front: list[int] = []
    best = -np.inf
    for i in order:
        if acc[i] > best:
            front.append(int(i))
            best = acc[i]
    return np.asarray(front, dtype=int)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _group_label(target: str, device: str) -> str:
    return f"{target} ({device})" if device else target


def _groups(df: pd.DataFrame) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for t, d in zip(df["target"].astype(str), df["device"].astype(str), strict=True):
        if (t, d) not in seen:
            seen.append((t, d))
    return seen


def _log_if_wide(ax, values: np.ndarray) -> None:
    v = values[np.isfinite(values) & (values > 0)]
    if len(v) and v.max() / v.min() > 20:
        ax.set_xscale("log")


def _interval_bars(ax, xs: np.ndarray, g: pd.DataFrame, colour: str) -> None:
    """Vertical Wilson 95 % interval of each point's robust accuracy, where the row has one."""
    if "robust_ci_lo" not in g.columns:
        return
    lo, hi, acc = (g[c].to_numpy(float) for c in ("robust_ci_lo", "robust_ci_hi", "robust_acc"))
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.errorbar(xs[ok], acc[ok], yerr=[acc[ok] - lo[ok], hi[ok] - acc[ok]], fmt="none", ecolor=colour,
                    alpha=0.6, capsize=3, zorder=2)


def parse_curve(text: str) -> list[tuple[float, float]]:
    """``eps_curve`` cell ("0.075:0.885 0.15:0.790 ...") as (eps, accuracy) pairs; blank or bad -> []."""
    out = []
    for part in str(text).split():
        try:
            e, a = part.split(":")
            out.append((float(e), float(a)))
        except ValueError:
            return []
    return out


def eps_curves(df: pd.DataFrame, context: str, n_curve: int | None = None, name: str = "eps_curve") -> Plot | None:
    """Robust accuracy against ε per variant (Carlini et al.'s first sanity check: it must fall to ~0)."""
    from laaq.stats import wilson

    rows = plottable(df)
    if "eps_curve" not in rows.columns:
        return None
    rows = rows[rows["eps_curve"].map(lambda t: len(parse_curve(t)) > 1)]
    if rows.empty:
        return None
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    plotted = []
    for i, (_, r) in enumerate(rows.iterrows()):
        pts = parse_curve(r["eps_curve"])
        e = np.array([p[0] for p in pts])
        a = np.array([p[1] for p in pts])
        colour = _COLOURS[i % len(_COLOURS)]
        label = f"{r['variant']} ({r['target']})"
        ax.plot(e, a, marker="o", color=colour, label=label)
        if n_curve:
            ci = np.array([wilson(round(v * n_curve), n_curve) for v in a])
            ax.fill_between(e, ci[:, 0], ci[:, 1], color=colour, alpha=0.12)
        plotted.append(("curve", str(r["target"]), str(r["device"]), str(r["variant"])))
    ax.set_xlabel("L-inf radius eps")
    ax.set_ylabel("robust accuracy on the artefact")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"Robust accuracy vs eps — {context}", fontsize=11)
    caption = ("Sanity check (Carlini et al. 2019): the white-box members at the curve's step budget, every example "
               "judged on the artefact; accuracy must not rise with eps and must reach ~0 at the largest radius "
               "(at half the data range every image can be moved to one constant image)."
               + (f" Bands: Wilson 95 % intervals over the {n_curve} curve images." if n_curve else ""))
    return Plot(name, f"Robust accuracy vs eps — {context}", caption, _png(fig), tuple(plotted))


def latency_vs_robust(df: pd.DataFrame, context: str, name: str = "latency_vs_robust") -> Plot | None:
    """Batch-1 latency against robust accuracy (with its 95 % interval), one panel per measurement kind,
    Pareto front per target."""
    rows = plottable(df)
    rows = rows[np.isfinite(rows["lat_small_median_ms"]) & np.isfinite(rows["robust_acc"])]
    if rows.empty:
        return None
    kinds = [k for k in ("native", "emulated") if (rows["measured_as"].map(measured_kind) == k).any()]
    kinds += sorted(set(rows["measured_as"].map(measured_kind)) - set(kinds))
    groups = _groups(rows)
    plotted: list[tuple[str, str, str, str]] = []
    fig = Figure(figsize=(6.2 * len(kinds), 4.4))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        sub = rows[rows["measured_as"].map(measured_kind) == kind]
        for gi, (t, d) in enumerate(groups):
            g = sub[(sub["target"].astype(str) == t) & (sub["device"].astype(str) == d)]
            if g.empty:
                continue
            colour = _COLOURS[gi % len(_COLOURS)]
            lat, acc = g["lat_small_median_ms"].to_numpy(float), g["robust_acc"].to_numpy(float)
            ax.scatter(lat, acc, color=colour, marker=_MARKERS.get(kind, "^"), s=46, zorder=3,
                       label=_group_label(t, d))
            _interval_bars(ax, lat, g, colour)
            sched = g["schedule"].astype(str) if "schedule" in g.columns else [""] * len(g)
            for x, y, v, s in zip(lat, acc, g["variant"].astype(str), sched, strict=True):
                # an untuned float row inflates every speed-up read off this axis: say so on the point
                ax.annotate(f"{v} (untuned)" if s == "untuned" else v, (x, y), textcoords="offset points",
                            xytext=(5, 4), fontsize=8)
                plotted.append((kind, t, d, v))
            front = pareto_front(lat, acc)
            if len(front) > 1:
                ax.step(lat[front], acc[front], where="post", color=colour, alpha=0.6, linestyle="--", linewidth=1.2,
                        label=f"Pareto front {t}")
        _log_if_wide(ax, sub["lat_small_median_ms"].to_numpy(float))
        ax.set_title(_PANEL_TITLES.get(kind, f"{kind}"), fontsize=10)
        ax.set_xlabel(f"batch-1 latency, median of repeats (ms) — {kind}")
        ax.set_ylabel("robust accuracy of the compiled artefact (attack ensemble)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Latency vs robust accuracy — {context}", fontsize=11)
    caption = ("Latency: TVM time_evaluator on the device at batch 1 (median over repeats); robust accuracy (per-image "
               "worst case of the run's attack ensemble) from the artefact's own outputs, vertical bars its Wilson "
               "95 % interval. Dashed: Pareto front per target (faster and more robust is better). "
               + ("Emulated points are in their own panel: QEMU timings are a functional check, not performance. "
                  if "emulated" in kinds else "")
               + "Rows not run are not plotted.")
    return Plot(name, f"Latency vs robust accuracy — {context}", caption, _png(fig), tuple(plotted))


def energy_vs_robust(df: pd.DataFrame, context: str, name: str = "energy_vs_robust") -> Plot | None:
    """Energy proxy (and measured energy, if any sensor filled it) against robust accuracy."""
    rows = plottable(df)
    if rows.empty:
        return None
    proxy = rows[np.isfinite(rows["energy_proxy_uj"]) & np.isfinite(rows["robust_acc"])]
    measured = rows[np.isfinite(rows["energy_measured_uj"]) & np.isfinite(rows["robust_acc"])]
    panels = [("proxy", proxy)] + ([("measured", measured)] if len(measured) else [])
    if proxy.empty and measured.empty:
        return None
    groups = _groups(rows)
    plotted: list[tuple[str, str, str, str]] = []
    fig = Figure(figsize=(6.2 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (what, sub) in zip(axes, panels, strict=True):
        col = "energy_proxy_uj" if what == "proxy" else "energy_measured_uj"
        for gi, (t, d) in enumerate(groups):
            for kind in ("native", "emulated"):
                g = sub[(sub["target"].astype(str) == t) & (sub["device"].astype(str) == d)
                        & (sub["measured_as"].map(measured_kind) == kind)]
                if g.empty:
                    continue
                e, acc = g[col].to_numpy(float), g["robust_acc"].to_numpy(float)
                ax.scatter(e, acc, color=_COLOURS[gi % len(_COLOURS)], marker=_MARKERS[kind], s=46, zorder=3,
                           label=f"{_group_label(t, d)}, accuracy {kind}")
                _interval_bars(ax, e, g, _COLOURS[gi % len(_COLOURS)])
                for x, y, v in zip(e, acc, g["variant"].astype(str), strict=True):
                    ax.annotate(v, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
                    plotted.append((what, t, d, v))
        _log_if_wide(ax, sub[col].to_numpy(float))
        if what == "proxy":
            ax.set_title("energy PROXY: op/byte counts x Horowitz 45 nm table (a model, not measured)", fontsize=9)
            ax.set_xlabel("energy proxy per inference (µJ, modelled)")
        else:
            ax.set_title("energy MEASURED by a sensor (RAPL / NVML / meter)", fontsize=9)
            ax.set_xlabel("measured energy per inference (µJ)")
        ax.set_ylabel("robust accuracy of the compiled artefact (attack ensemble)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Energy vs robust accuracy — {context}", fontsize=11)
    caption = ("Energy proxy = Σ MACs × energy per MAC (by bit width) + weight bytes × DRAM energy + activation "
               "bytes × SRAM energy (Horowitz, ISSCC 2014, 45 nm; target files may override): a model, never a "
               "measurement. " + ("The second panel is measured energy from a real sensor. " if len(measured) else "")
               + "Marker: circle = accuracy from a native run, square = from an emulated run. Rows not run are "
               "not plotted.")
    return Plot(name, f"Energy vs robust accuracy — {context}", caption, _png(fig), tuple(plotted))


def layer_bits(layers: pd.DataFrame, context: str, name: str = "layer_bits") -> Plot | None:
    """Per-layer weight bits of each variant; Lipschitz constants on a second axis when recorded.

    Float variants (32 bits everywhere) are left out when integer ones exist, so that 2–8-bit plans
    stay readable; the caption says so. A missing or empty ``lipschitz`` column is simply not drawn.
    """
    if layers.empty or "weight_bits" not in layers.columns:
        return None
    lay = layers.copy()
    lay["weight_bits"] = pd.to_numeric(lay["weight_bits"], errors="coerce")
    if "target" in lay.columns and lay["target"].nunique() > 1:  # bits are a property of the plan, not the board
        lay = lay[lay["target"] == lay["target"].iloc[0]]
    variants = list(dict.fromkeys(lay["variant"].astype(str)))
    int_variants = [v for v in variants if (lay.loc[lay["variant"] == v, "weight_bits"] < 32).any()]
    shown = int_variants or variants
    dropped = [v for v in variants if v not in shown]
    layer_names = list(dict.fromkeys(lay["layer"].astype(str)))
    x = np.arange(len(layer_names))
    width = 0.8 / max(len(shown), 1)
    fig = Figure(figsize=(max(6.0, 0.9 * len(layer_names) + 3), 4.4))
    ax = fig.subplots()
    for i, v in enumerate(shown):
        sub = lay[lay["variant"] == v].set_index("layer")
        bits = [float(sub.loc[n, "weight_bits"]) if n in sub.index else np.nan for n in layer_names]
        ax.bar(x + (i - (len(shown) - 1) / 2) * width, bits, width, color=_COLOURS[i % len(_COLOURS)], label=v,
               alpha=0.85)
    ax.set_xticks(x, layer_names, rotation=45 if len(layer_names) > 8 else 0, ha="right" if len(layer_names) > 8
                  else "center")
    ax.set_ylabel("weight bits (from the quantization plan)")
    ax.set_xlabel("layer (graph order)")
    ax.grid(True, axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lip_drawn = False
    if "lipschitz" in lay.columns:
        lay["lipschitz"] = pd.to_numeric(lay["lipschitz"], errors="coerce")
        if np.isfinite(lay["lipschitz"]).any():
            ax2 = ax.twinx()
            for i, v in enumerate(shown):
                sub = lay[lay["variant"] == v].set_index("layer")
                lip = [float(sub.loc[n, "lipschitz"]) if n in sub.index else np.nan for n in layer_names]
                ax2.plot(x, lip, marker="D", color=_COLOURS[i % len(_COLOURS)], linestyle=":", label=f"{v} Lipschitz")
            ax2.set_yscale("log")
            ax2.set_ylabel("layer Lipschitz constant (operator norm, log)")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
            lip_drawn = True
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.08 if lip_drawn else 1.0, 1.0))
    title = "Per-layer weight bits" + (" and Lipschitz constants" if lip_drawn else "")
    ax.set_title(f"{title} — {context}", fontsize=11)
    caption = ("Bars: weight bits per layer as set by each variant's quantization plan (configuration, not a "
               "measurement). " + ("Diamonds: per-layer Lipschitz constants from layers.csv (operator norm of the "
                                  "layer on its real input shape). " if lip_drawn else
                                  "No Lipschitz constants recorded in layers.csv for this run. ")
               + (f"Float variants ({', '.join(dropped)}: 32 bits everywhere) left out for readability."
                  if dropped else ""))
    target = str(lay["target"].iloc[0]) if "target" in lay.columns else ""
    plotted = tuple(("bits", target, "", v) for v in shown) + (
        tuple(("lipschitz", target, "", v) for v in shown) if lip_drawn else ())
    return Plot(name, f"{title} — {context}", caption.strip(), _png(fig), plotted)


def layer_latency(layers: pd.DataFrame, context: str, measured_as: str = "",
                  name: str = "layer_latency") -> Plot | None:
    """Per-layer measured latency of each variant at its own widths, beside the bit-width figure; None when
    ``layers.csv`` has no ``latency_ms`` (the table is measured only with ``--layer-times`` /
    ``--latency-budget``). Each layer was timed alone on the device (batch 1), so the bars say which layers a
    narrower width made faster *on this target* — emulated tables are labelled so and rank nothing."""
    if layers.empty or "latency_ms" not in layers.columns:
        return None
    lay = layers.copy()
    lay["latency_ms"] = pd.to_numeric(lay["latency_ms"], errors="coerce")
    lay = lay[np.isfinite(lay["latency_ms"])]
    if lay.empty:
        return None
    variants = list(dict.fromkeys(lay["variant"].astype(str)))
    layer_names = list(dict.fromkeys(lay["layer"].astype(str)))
    x = np.arange(len(layer_names))
    width = 0.8 / max(len(variants), 1)
    fig = Figure(figsize=(max(6.0, 0.9 * len(layer_names) + 3), 4.4))
    ax = fig.subplots()
    for i, v in enumerate(variants):
        sub = lay[lay["variant"] == v].set_index("layer")
        ms = [float(sub.loc[n, "latency_ms"]) if n in sub.index else np.nan for n in layer_names]
        bits = [str(sub.loc[n, "weight_bits"]) if n in sub.index and "weight_bits" in sub.columns else ""
                for n in layer_names]
        bars = ax.bar(x + (i - (len(variants) - 1) / 2) * width, ms, width, color=_COLOURS[i % len(_COLOURS)],
                      label=v, alpha=0.85)
        for bar, b in zip(bars, bits, strict=True):
            if b:
                ax.annotate(f"{b}b", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=6)
    ax.set_xticks(x, layer_names, rotation=45 if len(layer_names) > 8 else 0, ha="right" if len(layer_names) > 8
                  else "center")
    how = f" ({measured_as})" if measured_as else ""
    ax.set_ylabel(f"layer latency, batch 1, median (ms){how}")
    ax.set_xlabel("layer (graph order)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    title = "Per-layer latency at each variant's widths"
    ax.set_title(f"{title} — {context}", fontsize=11)
    caption = ("Bars: each weighted layer compiled as its own module (the model's layout, requantization included, "
               "residual add excluded) and timed on the target's device with time_evaluator at the variant's "
               f"weight width (label above each bar){how}; from layers.csv latency_ms.")
    target = str(lay["target"].iloc[0]) if "target" in lay.columns else ""
    return Plot(name, f"{title} — {context}", caption, _png(fig), tuple(("latency", target, "", v) for v in variants))
