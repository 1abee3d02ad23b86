"""Where a run's time went: wall seconds per stage, per target and variant.

Why: a benchmark that takes an hour should say which hour. Every stage of ``bench`` (set-up and
training, calibration, search, lowering, compiling each batch, tuning, the clean pass, each attack of
the preset, the sanity checks, timing) is timed here once and lands in ``run.json`` (``stages``), the
end-of-run summary and the report's stacked bar per variant.
"""

from __future__ import annotations

import contextlib
import json
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

    def add(self, scope: str, stage: str, s: float) -> None:
        d = self.seconds.setdefault(scope, {})
        d[stage] = round(d.get(stage, 0.0) + s, 2)

    def merge(self, scope: str, stages: dict[str, float]) -> None:
        for k, v in stages.items():
            self.add(scope, k, float(v))

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


def earlier_stages(folder: Path) -> dict[str, dict[str, float]]:
    """Stage times a resumed run's earlier sessions recorded (their variants are not measured again)."""
    try:
        return dict(json.loads((folder / "run.json").read_text()).get("stages", {}))
    except (OSError, ValueError):
        return {}
