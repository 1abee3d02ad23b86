"""Atomic writes and resumable run folders."""

from __future__ import annotations

import errno
import os

import pytest

from harness.results import ResultsError, RunStore, atomic_write_text


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch) -> None:
    p = tmp_path / "metrics.csv"
    atomic_write_text(p, "old\n")

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(ResultsError, match="No space left.*intact"):
        atomic_write_text(p, "new\n")
    monkeypatch.undo()
    assert p.read_text() == "old\n"
    assert [f.name for f in tmp_path.iterdir()] == ["metrics.csv"], "no temp file left behind"


def test_store_resumes_without_duplicates(tmp_path) -> None:
    s = RunStore(tmp_path, ["target", "variant", "x"], ["target", "variant", "layer"])
    s.add({"target": "x86", "variant": "fp32", "x": 1}, [{"target": "x86", "variant": "fp32", "layer": "a"}])
    s.add({"target": "x86", "variant": "int8", "x": 2}, [])
    s2 = RunStore(tmp_path, ["target", "variant", "x"], ["target", "variant", "layer"])
    assert s2.done("x86", "fp32") and s2.done("x86", "int8") and not s2.done("arm", "fp32")
    s2.add({"target": "x86", "variant": "fp32", "x": 3}, [{"target": "x86", "variant": "fp32", "layer": "a"}])
    df = RunStore(tmp_path, ["target", "variant", "x"], ["target", "variant", "layer"]).frame()
    assert len(df) == 2 and df.set_index("variant").loc["fp32", "x"] == "3"
    assert len(s2.layer_rows) == 1
