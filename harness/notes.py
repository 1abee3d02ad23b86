"""What a report says beside its tables: short cells, the provenance they no longer hold, and warnings.

Why: a comparison table is read for its figures. A not-run CUDA row's device description runs to 300
characters, and as a table cell it pushed the variant, latency and accuracy columns off a laptop's
screen. Cells now hold a short name; the full description goes into a note under the table, one per
target. And a figure measured while the board heated up, throttled or jittered is flagged where it is
shown, so nobody compares it as if it were steady.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from harness import plots
from harness.timing import BUSY_FRAC

CELL_CHARS = {"device": 32, "measured_as": 24}  # longest cells of a comparison table ("not run: no CUDA device")
# A figure is flagged as unstable when, for either batch size, p90 lies more than SPREAD_LIMIT above the median;
# when the hottest thermal zone rose by more than TEMP_RISE_C during timing; when the clock fell by more than
# CLOCK_DROP; or when the Raspberry Pi firmware's throttling word says it throttled (or was under-voltage).
SPREAD_LIMIT = 0.15
TEMP_RISE_C = 3.0
CLOCK_DROP = 0.10
_NOW, _SINCE_BOOT = 0xF, 0xF0000  # harness.devices.system.THROTTLED_* (not imported: reports read files only)


def short(text: object, limit: int = CELL_CHARS["device"]) -> str:
    """A cell-sized name: what precedes " | " (details) and " (" (explanations), cut to ``limit`` characters."""
    s = str(text).split(" | ")[0].split(" (")[0].strip()
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"


def short_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its ``device`` and ``measured_as`` cells shortened (the full text goes to :func:`provenance`)."""
    out = table.copy()
    for col, limit in CELL_CHARS.items():
        if col in out.columns:
            out[col] = [short(v, limit) for v in out[col]]
    return out


def overview(rows: pd.DataFrame) -> list[str]:
    """One line per target, device (short) and ``measured_as``: which variants were measured how."""
    view = rows.assign(_device=[short(d) for d in rows["device"]])
    return [f"`{t}` on {d or '(no device)'}: **{m}** — {', '.join(g['variant'])}"
            for (t, d, m), g in view.groupby(["target", "_device", "measured_as"], sort=False)]


def provenance(rows: pd.DataFrame) -> list[str]:
    """One line per (target, device, measured_as) whose full text a short cell hides: what was measured, where."""
    lines = []
    for (t, d, m), g in rows.groupby(["target", "device", "measured_as"], sort=False):
        if short(d) == str(d).strip() and short(m, CELL_CHARS["measured_as"]) == str(m).strip():
            continue
        lines.append(f"`{t}` ({', '.join(g['variant'])}) — **{m}** — on {d or '(no device)'}")
    return lines


def _num(row: Mapping[str, object], key: str) -> float | None:
    try:
        v = float(str(row.get(key, "")))
    except ValueError:
        return None
    return v if v == v else None  # NaN (an empty CSV cell read as float) is "not there"


def _word(row: Mapping[str, object], key: str) -> int | None:
    text = str(row.get(key, "")).strip()
    try:
        return int(text, 16) if text and text.lower() != "nan" else None
    except ValueError:
        return None


def row_warnings(row: Mapping[str, object]) -> list[str]:
    """Why this row's latency may not be a steady figure (empty: nothing seen). Rows not measured natively
    get none: emulated timings are smoke tests anyway, and rows not run have no figure."""
    busy = str(row.get("busy_host", "") or "").strip()
    kind = plots.measured_kind(row.get("measured_as", ""))
    out = [f"timed on a BUSY host — {busy.removeprefix('busy: ')}"] if busy and busy != "nan" and kind in (
        "native", "emulated") else []
    if kind != "native":
        return out
    for tag in ("small", "large"):
        spread = _num(row, f"lat_{tag}_spread_pct")
        if spread is not None and spread / 100 > SPREAD_LIMIT:
            batch = str(row.get(f"batch_{tag}", "")).removesuffix(".0") or tag
            out.append(f"batch {batch}: the interleaved rounds' medians differ by {spread:g} % (slowest vs fastest)")
        p50, p90 = _num(row, f"lat_{tag}_median_ms"), _num(row, f"lat_{tag}_p90_ms")
        if p50 and p90 is not None and (p90 - p50) / p50 > SPREAD_LIMIT:
            batch = str(row.get(f"batch_{tag}", "")).removesuffix(".0") or tag
            out.append(f"batch {batch}: p90 {p90:g} ms is {(p90 - p50) / p50:.0%} above the median {p50:g} ms")
    t0, t1 = _num(row, "temp_c_before"), _num(row, "temp_c_after")
    if t0 is not None and t1 is not None and t1 - t0 > TEMP_RISE_C:
        out.append(f"temperature rose {t1 - t0:.1f} °C during timing ({t0:g} → {t1:g} °C)")
    f0, f1 = _num(row, "freq_mhz_before"), _num(row, "freq_mhz_after")
    if f0 and f1 is not None and f1 < (1 - CLOCK_DROP) * f0:
        out.append(f"CPU clock fell from {f0:g} to {f1:g} MHz during timing")
    w0, w1 = _word(row, "throttled_before"), _word(row, "throttled_after")
    if w1 is not None and (w1 & _NOW or (w0 is not None and w1 & ~w0 & _SINCE_BOOT)):
        out.append(f"the firmware reports throttling or under-voltage (get_throttled {w1:#x})")
    return out


def warning_lines(rows: pd.DataFrame) -> list[str]:
    """``target`` / ``variant``: its warnings, for every row that has any."""
    return [f"`{r['target']}` / `{r['variant']}`: " + "; ".join(w)
            for _, r in rows.iterrows() if (w := row_warnings(r.to_dict()))]


WARNING_INTRO = (f"**Figures that may not be steady** — timed while other processes used more than "
                 f"{BUSY_FRAC:.0%} of the host's CPUs (`busy_host`), round medians or p90 more than "
                 f"{SPREAD_LIMIT:.0%} apart from the median, a "
                 f"temperature rise above {TEMP_RISE_C:g} °C or a clock drop above {CLOCK_DROP:.0%} during timing, or "
                 "a throttling flag (README: *Results columns*). Re-measure with a cool-down (`--cooldown-ms`), "
                 "pinned threads (`--pin-threads`) or on an idle machine (`--quiet-host`) before reading much into "
                 "them:")
