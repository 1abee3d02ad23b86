"""The experiment's resumable state: one small JSON file per finished unit (model kind × seed × budget ×
method), written atomically, so an interrupted run resumes at the first unfinished unit.

Why per unit (as AutoAttack keeps a state file per attack): the grid is hours of attacks on 2 cores;
losing it to a killed process, or redoing finished plans to add one seed or one budget, is not an option.
A folder remembers the configuration digest it was made with and refuses to mix units of another one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from laaq.atomic import write_atomic


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write via a temp file in the same directory, then rename: readers never see half a file
    (:func:`laaq.atomic.write_atomic`)."""
    write_atomic(path, write)


class StateMismatch(RuntimeError):
    """The results folder holds units of a different configuration."""


@dataclass(frozen=True)
class Unit:
    """One evaluated model: its table row and per-image outcomes (clean, robust)."""

    key: str
    row: dict[str, object]
    clean: np.ndarray
    robust: np.ndarray
    plan: str = ""  # the plan's JSON ("" for fp32)

    def to_json(self) -> str:
        bits = {"clean": "".join("1" if v else "0" for v in self.clean),
                "robust": "".join("1" if v else "0" for v in self.robust)}
        return json.dumps({"key": self.key, "row": self.row, **bits, "plan": self.plan})

    @classmethod
    def from_json(cls, text: str) -> Unit:
        d = json.loads(text)
        arr = (lambda s: np.array([c == "1" for c in s], dtype=bool))
        return cls(d["key"], d["row"], arr(d["clean"]), arr(d["robust"]), d.get("plan", ""))


def unit_contents(out: Path) -> dict[str, tuple[str, str, str]]:
    """Per unit file of a folder: its plan's layer settings and its per-image outcomes — what must not
    depend on who computed it (timings and the node it ran on left out). For comparing executors."""
    got = {}
    for p in sorted((Path(out) / "units").glob("*.json")):
        u = json.loads(p.read_text())
        plan = json.loads(u["plan"])["layers"] if u["plan"] else None
        got[p.name] = (json.dumps(plan, sort_keys=True), u["clean"], u["robust"])
    return got


def unit_key(kind: str, seed: int, budget: str, method: str) -> str:
    return f"{kind}|{seed}|{budget}|{method}"


class UnitStore:
    """Finished units under ``<out>/units/``; ``<out>/state.json`` holds the configuration digest."""

    def __init__(self, out: Path, digest: str, describe: str = "") -> None:
        self.dir = Path(out) / "units"
        meta = Path(out) / "state.json"
        if meta.exists():
            found = json.loads(meta.read_text()).get("digest")
            if found != digest:
                raise StateMismatch(f"{out} holds experiment units of another configuration (digest {found}, this "
                                    f"run {digest}); give another --out or delete that folder to start over")
        else:
            atomic_write(meta, lambda t: Path(t).write_text(json.dumps({"digest": digest, "config": describe})))

    def _path(self, key: str) -> Path:
        return self.dir / (key.replace("|", "__") + ".json")

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def get(self, key: str) -> Unit:
        return Unit.from_json(self._path(key).read_text())

    def put(self, unit: Unit) -> None:
        atomic_write(self._path(unit.key), lambda t: Path(t).write_text(unit.to_json()))

    def __iter__(self) -> Iterator[Unit]:
        for p in sorted(self.dir.glob("*.json")) if self.dir.exists() else []:
            yield Unit.from_json(p.read_text())
