"""Run folders: atomic writes and resume.

A run folder holds ``run.json`` (configuration, environment, progress), ``metrics.csv`` (one row per
target × variant), ``layers.csv`` (per layer and variant) and ``report.md``. Every file is written
to a temporary file in the same folder and renamed over the old one, so a run killed at any moment
leaves either the previous complete file or the new complete file — never half of one. A re-run of
the same configuration finds the rows already measured and skips them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from laaq.atomic import write_atomic


class ResultsError(RuntimeError):
    """Results could not be written (e.g. disk full); earlier files are intact."""


def row_tag(target: str, variant: str) -> str:
    """The file-name stem of one (target, variant) row in a run folder: artefacts, per-image outcomes and
    attack state are named by it (``plan:name`` variants carry a colon, which is no file name)."""
    return f"{target}-{variant.replace(':', '_')}"


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`laaq.atomic.write_atomic`, a failure as one ResultsError line."""
    try:
        write_atomic(path, text)
    except OSError as e:
        raise ResultsError(f"could not write {path} ({e.strerror or e}); the previous version is intact. "
                           "Free some disk space and re-run: finished rows are kept.") from e


def atomic_write_bytes(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as e:
        raise ResultsError(f"could not write {path} ({e.strerror or e}); the previous version is intact") from e


def rows_to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    return buf.getvalue()


class RunStore:
    """One run folder; rows are keyed so that a resumed run never duplicates one."""

    def __init__(self, folder: Path, columns: list[str], layer_columns: list[str]) -> None:
        self.folder = folder
        self.columns = columns
        self.layer_columns = layer_columns
        self.rows: list[dict[str, Any]] = []
        self.layer_rows: list[dict[str, Any]] = []
        metrics = folder / "metrics.csv"
        if metrics.exists():
            try:
                self.rows = pd.read_csv(metrics, dtype=str, keep_default_na=False).to_dict("records")
            except Exception as e:
                raise ResultsError(f"{metrics} is unreadable ({e}); move it away to start this run afresh") from e
        layers = folder / "layers.csv"
        if layers.exists():
            self.layer_rows = pd.read_csv(layers, dtype=str, keep_default_na=False).to_dict("records")

    @staticmethod
    def key(row: dict[str, Any]) -> tuple[str, str]:
        return str(row["target"]), str(row["variant"])

    def done(self, target: str, variant: str) -> bool:
        return any(self.key(r) == (target, variant) for r in self.rows)

    def add(self, row: dict[str, Any], layer_rows: list[dict[str, Any]]) -> None:
        """Record a finished measurement; layers first, so a row never exists without its layers."""
        k = self.key(row)
        self.layer_rows = [r for r in self.layer_rows if (str(r["target"]), str(r["variant"])) != k] + layer_rows
        atomic_write_text(self.folder / "layers.csv", rows_to_csv(self.layer_rows, self.layer_columns))
        self.rows = [r for r in self.rows if self.key(r) != k] + [row]
        atomic_write_text(self.folder / "metrics.csv", rows_to_csv(self.rows, self.columns))

    def update(self, target: str, variant: str, values: dict[str, Any]) -> None:
        """Fill columns of an existing row (the timing phase's latency, after the accuracy was recorded)."""
        for r in self.rows:
            if self.key(r) == (target, variant):
                r.update(values)
                break
        else:
            raise KeyError(f"no row {target}/{variant} to update in {self.folder / 'metrics.csv'}")
        atomic_write_text(self.folder / "metrics.csv", rows_to_csv(self.rows, self.columns))

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.folder / name, json.dumps(obj, indent=2, default=str) + "\n")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)
