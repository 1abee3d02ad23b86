"""Where a run's time went, for its report: stages grouped by kind, one stacked bar per variant, and the table.

From ``run.json``'s ``stages`` (:mod:`harness.stages` records them while ``bench`` runs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.document import Block
from harness.plots import Plot, _png

#: stage name prefix -> (category, colour) for the stage-cost bars; first match wins, the rest is "other"
_STAGE_GROUPS = [
    (("data", "training", "checkpoint", "calibration", "search", "quantize", "tuning"), "set-up, training, search",
     "#7f7f7f"),
    (("lowering", "compile", "load"), "lowering, compile, load", "#8c564b"),
    (("clean",), "clean pass", "#17becf"),
    (("pgd", "apgd", "fab"), "white-box attacks", "#1f77b4"),
    (("square",), "Square (+ routing, verification)", "#ff7f0e"),
    (("checks", "eps_curve"), "sanity checks, eps-curve", "#9467bd"),
    (("timing", "agreement"), "timing, agreement", "#2ca02c"),
]


def stage_group(stage: str) -> tuple[str, str]:
    for prefixes, label, colour in _STAGE_GROUPS:
        if stage.startswith(prefixes):
            return label, colour
    return "other (report, ...)", "#bcbd22"


def stage_costs(stages: dict[str, dict[str, float]], context: str, name: str = "stage_costs") -> Plot | None:
    """One horizontal stacked bar per scope (the run's shared stages, then each target/variant): where the
    wall time went, stages grouped by kind. From ``run.json``'s ``stages``."""
    scopes = [s for s, d in stages.items() if sum(d.values()) > 0]
    if not scopes:
        return None
    labels = [label for _, label, _ in _STAGE_GROUPS] + ["other (report, ...)"]
    colours = dict((label, c) for _, label, c in _STAGE_GROUPS) | {"other (report, ...)": "#bcbd22"}
    sums = {s: dict.fromkeys(labels, 0.0) for s in scopes}
    for s in scopes:
        for stage, sec in stages[s].items():
            sums[s][stage_group(stage)[0]] += float(sec)
    fig = Figure(figsize=(8, 0.5 * len(scopes) + 1.6))
    ax = fig.add_subplot()
    ys = np.arange(len(scopes))[::-1]
    left = np.zeros(len(scopes))
    for label in labels:
        vals = np.array([sums[s][label] for s in scopes])
        if vals.sum() > 0:
            ax.barh(ys, vals, left=left, color=colours[label], label=label)
            left += vals
    for y, total in zip(ys, left, strict=True):
        ax.text(total, y, f" {total:.0f} s", va="center", fontsize=8)
    ax.set_yticks(ys, scopes, fontsize=8)
    ax.set_xlabel("wall seconds")
    ax.set_xlim(0, left.max() * 1.15)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"Where the time went — {context}", fontsize=9)
    total = left.sum()
    caption = (f"Wall time of every stage of this run ({total:.0f} s = {total / 60:.1f} min in all), per target and "
               "variant; the `run` bar holds the shared stages (data, training or the cached checkpoint, "
               "calibration, report). Measured with a wall clock around each stage on the host that ran `bench`; a "
               "resumed run shows its earlier sessions' stages for the variants they measured.")
    return Plot(name, "Where the time went", caption, _png(fig))


def stage_blocks(stages: dict[str, dict[str, float]], context: str) -> list[Block]:
    """Where the time went: a stacked bar per variant and the stage table (wall seconds)."""
    if not stages:
        return []
    rows = [{"scope": scope, "stage": stage, "seconds": sec, "kind": stage_group(stage)[0]}
            for scope, d in stages.items() for stage, sec in d.items()]
    totals = pd.DataFrame([{"scope": scope, "total_s": round(sum(d.values()), 1),
                            "stages": ", ".join(f"{k} {v:.1f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))}
                           for scope, d in stages.items()])
    blocks = [Block("h2", "Where the time went"),
              Block("p", f"Wall seconds per stage ({sum(r['seconds'] for r in rows):.0f} s in all); `run` holds the "
                         "shared stages. Every stage is also in run.json (`stages`)."),
              Block("table", totals)]
    made = stage_costs(stages, context)
    if made is not None:
        blocks.append(Block("plot", made))
    return blocks
