"""Square's stand-in: a cheap function answering its queries in place of the deployed one, and the
sampled re-run on the artefact that must agree with it (:class:`StandInMismatch` otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from laaq.robustness.config import AttackError

RawRun = Callable[[torch.Tensor], np.ndarray]


class StandInMismatch(AttackError):
    """Square's stand-in computed something other than the deployed function on a sampled query."""


@dataclass(frozen=True)
class StandIn:
    """A cheap function that answers Square's queries in place of the deployed one, and how to check it.

    Why: Square needs thousands of queries per image; an untuned or remote artefact (a board over RPC,
    an emulated Pi) answers each in milliseconds to seconds, its host stand-in in microseconds. The stand-in
    only steers the search: Square's final examples are judged on ``deployed_raw`` like every member's, and
    a uniform sample of its queries (``sample_rate``, at least ``min_sample``, at most ``max_sample``) is
    re-run there and compared — ``exact``: raw outputs bit-identical (integer artefacts and their twin);
    otherwise no logit may differ by more than ``rel_tol`` × the largest logit and the top-1 must agree
    wherever the stand-in's top-2 margin exceeds that tolerance.
    """

    name: str  # what answers the queries, for run.json and reports ("bit-exact twin", "PyTorch float model")
    raw: RawRun  # float images -> the stand-in's raw outputs (the deployed function's output format)
    deployed_raw: RawRun  # float images -> the deployed artefact's raw outputs
    to_logits: Callable[[np.ndarray], np.ndarray]
    exact: bool
    sample_rate: float = 0.01
    min_sample: int = 256
    max_sample: int = 4096
    rel_tol: float = 1e-3


@dataclass(frozen=True)
class StandInCheck:
    """What re-running a sample of Square's queries on the deployed function found."""

    stand_in: str
    queries: int  # rows Square sent to the stand-in
    sampled: int  # of which re-run on the deployed function
    mismatched: int
    argmax_agreement: float
    max_abs_diff: float
    exact: bool

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def line(self) -> str:
        rule = "bit-identical outputs" if self.exact else "logits within tolerance"
        return (f"Square queried the {self.stand_in} ({self.queries:,} queries); {self.sampled:,} sampled queries "
                f"re-run on the artefact: {self.mismatched} without {rule}, top-1 agreement "
                f"{self.argmax_agreement:.4f}, max |d logit| {self.max_abs_diff:.3g}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "line": self.line()}


class _QuerySample:
    """A uniform sample of the rows a stand-in was queried with (reservoir sampling, Vitter's algorithm R)."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity, self.seen = capacity, 0
        self.rng = np.random.default_rng(seed)
        self.x: list[torch.Tensor | None] = [None] * capacity
        self.out: list[np.ndarray | None] = [None] * capacity

    def offer(self, x: torch.Tensor, out: np.ndarray) -> None:
        for r in range(len(x)):
            i = self.seen + r
            slot = i if i < self.capacity else int(self.rng.integers(0, i + 1))
            if slot < self.capacity:
                self.x[slot], self.out[slot] = x[r].detach().clone(), out[r].copy()
        self.seen += len(x)

    def take(self, k: int) -> tuple[torch.Tensor, np.ndarray]:
        filled = min(self.seen, self.capacity)
        pick = np.sort(self.rng.choice(filled, size=min(k, filled), replace=False))
        return torch.stack([self.x[i] for i in pick]), np.stack([self.out[i] for i in pick])


def _sample_size(s: StandIn, queries: int) -> int:
    return min(s.max_sample, max(s.min_sample, math.ceil(s.sample_rate * queries)))


def _verify_stand_in(s: StandIn, sample: _QuerySample) -> StandInCheck:
    """Re-run the sampled queries on the deployed function and compare its raw outputs with the stand-in's."""
    if sample.seen == 0:
        return StandInCheck(s.name, 0, 0, 0, 1.0, 0.0, s.exact)
    xs, ref = sample.take(_sample_size(s, sample.seen))
    dev = np.asarray(s.deployed_raw(xs))
    if s.exact:
        bad = ~np.all(dev == ref, axis=1)
        diff = float(np.abs(dev.astype(np.int64) - ref.astype(np.int64)).max())
        agree = s.to_logits(dev).argmax(1) == s.to_logits(ref).argmax(1)
    else:
        ld, lr = s.to_logits(dev).astype(np.float64), s.to_logits(ref).astype(np.float64)
        tol = s.rel_tol * max(1.0, float(np.abs(lr).max()))
        top2 = np.sort(lr, axis=1)[:, -2:] if lr.shape[1] > 1 else np.zeros((len(lr), 2))
        agree = ld.argmax(1) == lr.argmax(1)
        delta = np.abs(ld - lr).max(axis=1)
        bad = (delta > tol) | (~agree & (top2[:, 1] - top2[:, 0] > tol))
        diff = float(delta.max())
    return StandInCheck(s.name, sample.seen, len(xs), int(bad.sum()), float(agree.mean()), diff, s.exact)
