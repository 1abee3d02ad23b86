"""The outcome of one evaluation: per-image verdicts, the sanity checks, intervals and read-outs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from laaq.robustness.config import EvalConfig
from laaq.robustness.stand_in import StandInCheck
from laaq.stats import wilson


@dataclass(frozen=True)
class Check:
    """One sanity check: verdict ("ok" or what failed), with the figures it rests on."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.name} {'ok' if self.ok else 'FAILED'} ({self.detail})"


@dataclass
class RobustResult:
    """Per-image outcomes of one evaluation, judged on the deployed function's outputs."""

    config: EvalConfig
    clean: np.ndarray  # bool per image
    robust: np.ndarray  # bool per image: correct under every member
    cumulative: dict[str, np.ndarray]  # member -> bool per image, correct under this and all earlier members
    x_worst: torch.Tensor  # per image: the input that broke it, else the last member's attempt (else clean)
    curve: list[tuple[float, float, int]] = field(default_factory=list)  # (eps, accuracy, n)
    checks: list[Check] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    stand_in: StandInCheck | None = None  # Square answered by a stand-in: the sampled comparison with the artefact

    @property
    def n(self) -> int:
        return int(self.clean.size)

    @property
    def clean_acc(self) -> float:
        return float(self.clean.mean())

    @property
    def robust_acc(self) -> float:
        return float(self.robust.mean())

    def interval(self, which: str = "robust") -> tuple[float, float]:
        v = self.robust if which == "robust" else self.clean
        return wilson(int(v.sum()), v.size)

    def member_accs(self) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self.cumulative.items()}

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def gradient_masking(self) -> str:
        c = self.check("black-box")
        return "" if c is None else ("no" if c.ok else "suspected")

    def curve_str(self) -> str:
        return " ".join(f"{e:.4g}:{a:.3f}" for e, a, _ in self.curve)

    def members_str(self) -> str:
        """Accuracy after each member, cumulatively (AutoAttack's read-out): 'pgd-20 0.494 > apgd-ce 0.443 ...'."""
        return " > ".join(f"{k} {v:.3f}" for k, v in self.member_accs().items())

    def checks_str(self) -> str:
        return "; ".join(c.line() for c in self.checks)
