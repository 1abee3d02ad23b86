"""The one atomic writer (laaq.atomic): old or new content, never a part; 0644; no temporary file left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from laaq.atomic import write_atomic


@pytest.mark.parametrize("content", ["text ✓\n", b"\x00bytes", lambda tmp: Path(tmp).write_text("by a function")])
def test_every_kind_of_content_lands_whole_and_shareable(tmp_path: Path, content) -> None:
    path = tmp_path / "sub" / "out.dat"
    write_atomic(path, content)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert path.read_bytes() in (b"text \xe2\x9c\x93\n", b"\x00bytes", b"by a function")
    assert [p.name for p in path.parent.iterdir()] == ["out.dat"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_atomic(path, "old\n")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_project_writers_use_it(tmp_path: Path) -> None:
    """The writers that had drifted (results, experiment store, checkpoints, attack state) now share it."""
    import numpy as np

    from harness.results import atomic_write_bytes, atomic_write_text
    from laaq.experiment.store import atomic_write
    from laaq.robustness.ensemble import _State
    from laaq.train import _atomic_save

    atomic_write_text(tmp_path / "a.txt", "a")
    atomic_write_bytes(tmp_path / "b.bin", b"b")
    atomic_write(tmp_path / "c.csv", lambda t: Path(t).write_text("c"))
    _atomic_save({"x": 1}, tmp_path / "d.pt")
    _State(tmp_path / "e.npz", "key").put(alive=np.ones(3, bool))
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.csv", "d.pt", "e.npz"]
