"""CI fails when a test skips for a set-up reason (LAAQ_STRICT_SKIPS=1, set by .ci/run); hardware skips pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("reason", "fails"), [("no headless browser could be installed", True),
                                              ("GPU-only: no CUDA device visible to torch", False)])
def test_strict_skips(tmp_path: Path, reason: str, fails: bool) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(f"import pytest\n\ndef test_a():\n    pytest.skip({reason!r})\n\ndef test_b():\n    pass\n")
    env = {**os.environ, "LAAQ_STRICT_SKIPS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", str(probe), "--rootdir",
                        str(tmp_path), "-c", os.devnull], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert "skipped tests and why" in r.stdout and reason in r.stdout, r.stdout
    assert (r.returncode != 0) == fails, r.stdout
