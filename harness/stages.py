"""Where a run's time went: wall seconds per stage, per target and variant.

Why: a benchmark that takes an hour should say which hour. Every stage of ``bench`` (set-up and
training, calibration, search, lowering, compiling each batch, tuning, the clean pass, each attack of
the preset, the sanity checks, timing) is timed here once and lands in ``run.json`` (``stages``), the
end-of-run summary and the report's stacked bar per variant.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

RUN_SCOPE = "run"  # stages shared by every variant (set-up, training, calibration, report)


def scope_of(target: str, variant: str) -> str:
    return f"{target}/{variant}"


@dataclass
class StageClock:
    """Wall seconds per (scope, stage), in the order stages first ran; a stage timed twice adds up."""

    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_mib: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        reset_peak()

    def add(self, scope: str, stage: str, s: float) -> None:
        d = self.seconds.setdefault(scope, {})
        d[stage] = round(d.get(stage, 0.0) + s, 2)
        self._peak(scope, stage)

    def _peak(self, scope: str, stage: str) -> None:
        p = self.peak_mib.setdefault(scope, {})
        p[stage] = max(p.get(stage, 0.0), peak_rss_mib())
        reset_peak()

    def merge(self, scope: str, stages: dict[str, float]) -> None:
        """Stages timed elsewhere (an evaluation's attacks); their memory is one figure, ``attacks``."""
        for k, v in stages.items():
            d = self.seconds.setdefault(scope, {})
            d[k] = round(d.get(k, 0.0) + float(v), 2)
        self._peak(scope, "attacks")

    @contextlib.contextmanager
    def time(self, scope: str, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(scope, stage, time.perf_counter() - t0)

    def total(self, scope: str | None = None) -> float:
        scopes = [scope] if scope is not None else list(self.seconds)
        return round(sum(sum(self.seconds.get(s, {}).values()) for s in scopes), 1)

    def summary(self) -> str:
        """One line per scope: its total, then its stages by cost (what the end of ``bench`` prints)."""
        lines = []
        for scope, stages in self.seconds.items():
            parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]) if v >= 0.05)
            lines.append(f"  {scope:<24} {sum(stages.values()):8.1f} s  ({parts})")
        return "\n".join(lines)


def peak_rss_mib() -> float:
    """The process's resident-memory high-water mark in MiB (since the last :func:`reset_peak` on Linux)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def reset_peak() -> bool:
    """Resets the high-water mark (Linux ≥ 4.0: ``echo 5 > /proc/self/clear_refs``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def earlier_stages(folder: Path, key: str = "stages") -> dict[str, dict[str, float]]:
    """Stage times (``key="stages_peak_mib"``: peak memory) a resumed run's earlier sessions recorded (their
    variants are not measured again)."""
    try:
        return dict(json.loads((folder / "run.json").read_text()).get(key, {}))
    except (OSError, ValueError):
        return {}
