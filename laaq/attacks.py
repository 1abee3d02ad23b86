"""PGD (L∞, random restarts, worst case over restarts): training, calibration and the `quick` preset.

The evaluation ensemble (APGD, APGD-T, FAB-T, Square) comes from torchattacks, see :mod:`laaq.robustness`.

Every hyper-parameter is explicit: there are no library defaults hiding in an evaluation.
Random starts are drawn from a ``torch.Generator`` seeded by the caller, so two methods evaluated
with the same seed face the *same* random starts (paired attacks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pgd_step(eps: float, steps: int) -> float:
    """The project's one PGD step-size recipe: Madry-style 2.5·ε/steps, so that a walk from the random
    start can cross the whole ball in a fraction of the steps."""
    return 2.5 * eps / max(steps, 1)


@dataclass(frozen=True)
class PGDConfig:
    """Madry et al. PGD under an L∞ ball of radius ``eps`` around inputs in [0, 1]."""

    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 40
    restarts: int = 1
    random_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.eps < 0 or self.step_size < 0 or self.steps < 0 or self.restarts < 1:
            raise ValueError(f"invalid PGD configuration {self}")


def pgd(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, cfg: PGDConfig,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial examples; per sample, the restart with the highest loss (misclassified first)."""
    gen = generator or torch.Generator().manual_seed(cfg.seed)
    best = x.clone()
    best_loss = torch.full((len(x),), -float("inf"), device=x.device)
    best_wrong = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if cfg.eps == 0:
        return best
    for _ in range(cfg.restarts):
        if cfg.random_start:
            # drawn on the CPU generator whatever the device: the same seed gives the same starts on a GPU
            noise = ((torch.rand(x.shape, generator=gen) * 2 - 1) * cfg.eps).to(x.device)
            xa = torch.clamp(x + noise, 0, 1)
        else:
            xa = x.clone()
        for _ in range(cfg.steps):
            xa.requires_grad_(True)
            loss = F.cross_entropy(model(xa), y)
            (g,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                xa = xa + cfg.step_size * g.sign()
                xa = torch.min(torch.max(xa, x - cfg.eps), x + cfg.eps).clamp(0, 1)
        with torch.no_grad():
            out = model(xa)
            loss = F.cross_entropy(out, y, reduction="none")
            wrong = out.argmax(1) != y
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
            best[better] = xa[better].detach()
            best_loss = torch.where(better, loss, best_loss)
            best_wrong |= wrong
    return best.detach()


def pgd_in_batches(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   cfg: PGDConfig) -> torch.Tensor:
    """:func:`pgd` in batches whose backward pass fits the memory budget (:mod:`laaq.memory`), one stream of
    random starts across them; one batch — the same result as :func:`pgd` — wherever the whole set fits."""
    from laaq.memory import backward_batch, spans

    if not len(x):
        return x.clone()
    batch = backward_batch(model, x[:1], len(x))
    if batch >= len(x):
        return pgd(model, x, y, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    return torch.cat([pgd(model, x[sl], y[sl], cfg, gen) for sl in spans(len(x), batch)])
