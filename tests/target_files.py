"""Copies of shipped target files for tests that build their own targets folder (``extends`` followed)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from harness.targets import targets_dir


def copy_shipped(dest: Path, name: str) -> None:
    """``targets/<name>.toml`` and every file it extends, into ``dest`` (so ``extends = "<name>"`` resolves there)."""
    while name:
        text = (targets_dir() / f"{name}.toml").read_text()
        (dest / f"{name}.toml").write_text(text)
        name = tomllib.loads(text).get("extends", "")
