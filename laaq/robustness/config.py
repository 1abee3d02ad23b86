"""What an evaluation runs: attack presets (every budget explicit), the evaluation config, the ε-curve radii.

Apart from the runner so that the CLI, bundles and the experiment can name and validate a preset
without importing the attack machinery.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

DATA_RANGE = (0.0, 1.0)  # every data set of laaq.data is scaled to [0, 1]


class AttackError(ValueError):
    """An evaluation that cannot run as asked (bad ε, budget, preset, or a missing attack library)."""


@dataclass(frozen=True)
class AttackPreset:
    """What a preset runs; every budget is explicit and stated in run.json and reports."""

    name: str
    pgd_steps: int = 0  # hand-written PGD-CE (laaq.attacks.pgd), the project's former figure; 0 = off
    pgd_restarts: int = 1
    apgd_ce_steps: int = 0
    apgd_ce_restarts: int = 1
    apgd_t_steps: int = 0
    apgd_t_restarts: int = 1
    apgd_t_targets: int = 9  # top-k target classes (AutoAttack: 9)
    fab_t_steps: int = 0
    fab_t_targets: int = 9
    square_queries: int = 0
    square_restarts: int = 1
    square_p_init: float = 0.8
    check_samples: int = 200  # images for the masking / convergence / transfer checks
    curve_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)
    curve_samples: int = 200
    curve_steps: int = 25

    def __post_init__(self) -> None:
        counts = [self.pgd_steps, self.apgd_ce_steps, self.apgd_t_steps, self.fab_t_steps, self.square_queries,
                  self.check_samples, self.curve_samples, self.curve_steps]
        if min(counts) < 0 or min(self.pgd_restarts, self.apgd_ce_restarts, self.apgd_t_restarts,
                                  self.square_restarts, self.apgd_t_targets, self.fab_t_targets) < 1:
            raise AttackError(f"preset {self.name!r}: steps, queries and sample counts must be >= 0, "
                              "restarts and target counts >= 1")
        if not (self.pgd_steps or self.apgd_ce_steps or self.apgd_t_steps):
            raise AttackError(f"preset {self.name!r} has no white-box attack")
        if not 0 < self.square_p_init <= 1:
            raise AttackError(f"square_p_init must be in (0, 1], got {self.square_p_init}")

    def with_square_queries(self, queries: int) -> AttackPreset:
        if queries < 1:
            raise AttackError(f"a Square query budget must be >= 1, got {queries} (the black-box check needs queries)")
        return replace(self, square_queries=queries)

    def stronger(self) -> AttackPreset:
        """Twice the steps and one more restart for every white-box member (the convergence check)."""
        return replace(self, pgd_steps=2 * self.pgd_steps, pgd_restarts=self.pgd_restarts + 1,
                       apgd_ce_steps=2 * self.apgd_ce_steps, apgd_ce_restarts=self.apgd_ce_restarts + 1,
                       apgd_t_steps=2 * self.apgd_t_steps, fab_t_steps=0, square_queries=0)

    def members(self) -> list[str]:
        out = []
        if self.pgd_steps:
            out.append(f"pgd-{self.pgd_steps}")
        if self.apgd_ce_steps:
            out.append("apgd-ce")
        if self.apgd_t_steps:
            out.append("apgd-t")
        if self.fab_t_steps:
            out.append("fab-t")
        if self.square_queries:
            out.append("square")
        return out

    def describe(self, eps: float) -> str:
        """One line for reports: every member with its budget."""
        parts = []
        if self.pgd_steps:
            parts.append(f"PGD-CE {self.pgd_steps} steps x {self.pgd_restarts} restarts (step 2.5eps/steps)")
        if self.apgd_ce_steps:
            parts.append(f"APGD-CE {self.apgd_ce_steps} steps x {self.apgd_ce_restarts} restarts")
        if self.apgd_t_steps:
            parts.append(f"APGD-T {self.apgd_t_steps} steps x {self.apgd_t_restarts} restarts, top-"
                         f"{self.apgd_t_targets} targets")
        if self.fab_t_steps:
            parts.append(f"FAB-T {self.fab_t_steps} steps, top-{self.fab_t_targets} targets")
        if self.square_queries:
            parts.append(f"Square {self.square_queries} queries x {self.square_restarts} (p_init "
                         f"{self.square_p_init:g}, black-box on the deployed function)")
        return f"{self.name}: L-inf eps={eps:.4g}; per-image worst case of " + " + ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackPreset:
        d = dict(d)
        d["curve_factors"] = tuple(d.get("curve_factors", cls.curve_factors))
        return cls(**d)


PRESETS: dict[str, AttackPreset] = {
    # today's figure, for smoke tests: PGD-20 plus a short Square
    "quick": AttackPreset("quick", pgd_steps=20, square_queries=300, check_samples=100, curve_samples=100,
                          curve_steps=10),
    # AutoAttack's "standard" white-box part (APGD-CE 100 + APGD-T 100 x 9 targets) and its Square schedule,
    # with PGD-20 kept as the first member so the old figure stands next to the new one on the same images
    "standard": AttackPreset("standard", pgd_steps=20, apgd_ce_steps=100, apgd_t_steps=100, apgd_t_targets=9,
                             square_queries=2000),
    # for comparisons over many plans (the experiment's grid): AutoAttack's two APGD members at half the
    # steps and the top-3 targets, no Square — ~6x cheaper than "standard"; its gap to "standard" is
    # measured on the experiment's own plans (docs/method.md) rather than assumed
    "apgd": AttackPreset("apgd", apgd_ce_steps=50, apgd_t_steps=50, apgd_t_targets=3),
    # for final tables: restarts, FAB-T, the full 5,000-query Square
    "thorough": AttackPreset("thorough", pgd_steps=20, apgd_ce_steps=100, apgd_ce_restarts=5, apgd_t_steps=100,
                             apgd_t_restarts=2, fab_t_steps=100, square_queries=5000, square_restarts=2,
                             check_samples=500, curve_samples=500, curve_steps=50),
}


def get_preset(name: str) -> AttackPreset:
    if name not in PRESETS:
        raise AttackError(f"unknown attack preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class EvalConfig:
    """A robust evaluation: preset × radius × seed. Invalid radii are refused before any work."""

    preset: AttackPreset = field(default_factory=lambda: PRESETS["standard"])
    eps: float = 0.3
    seed: int = 0
    checks: bool = True  # ε-curve, convergence, masking and transfer checks (bench: on; experiment: off)
    batch: int = 500

    def __post_init__(self) -> None:
        lo, hi = DATA_RANGE
        if not self.eps > 0:
            raise AttackError(f"eps must be > 0 (got {self.eps}); eps = 0 is clean accuracy, not robustness")
        if self.eps > hi - lo:
            raise AttackError(f"eps={self.eps} is outside the data range [{lo:g}, {hi:g}]: every input can reach "
                              "every other one, so robust accuracy is 0 by construction")

    def describe(self) -> str:
        return self.preset.describe(self.eps)

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset.to_dict(), "eps": self.eps, "seed": self.seed, "checks": self.checks,
                "batch": self.batch, "description": self.describe()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalConfig:
        return cls(AttackPreset.from_dict(d["preset"]), float(d["eps"]), int(d["seed"]), bool(d["checks"]),
                   int(d.get("batch", 500)))


def curve_radii(eps: float, factors: tuple[float, ...]) -> list[float]:
    """ε-curve radii: multiples of ε, plus half the data range if they stop short of it (where every
    image can be moved to one constant image, so accuracy must fall to ~0 if the attack works)."""
    radii = sorted({round(f * eps, 6) for f in factors if f * eps <= DATA_RANGE[1] - DATA_RANGE[0]})
    half = (DATA_RANGE[1] - DATA_RANGE[0]) / 2
    if not radii or radii[-1] < half:
        radii.append(half)
    return radii
