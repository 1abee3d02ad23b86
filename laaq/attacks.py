"""PGD (L∞, random restarts, worst case over restarts) and a gradient-free check (Square-style).

Every hyper-parameter is explicit: there are no library defaults hiding in an evaluation.
Random starts are drawn from a ``torch.Generator`` seeded by the caller, so two methods evaluated
with the same seed face the *same* random starts (paired attacks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    best_loss = torch.full((len(x),), -float("inf"))
    best_wrong = torch.zeros(len(x), dtype=torch.bool)
    if cfg.eps == 0:
        return best
    for _ in range(cfg.restarts):
        if cfg.random_start:
            noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * cfg.eps
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


def square_attack(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: float,
                  queries: int = 300, p_init: float = 0.1, seed: int = 0) -> torch.Tensor:
    """A compact L∞ Square attack (Andriushchenko et al. 2020): gradient-free, margin loss.

    ``predict`` returns logits and may be a compiled artefact: no gradient is needed, which is the
    point — if it finds much lower accuracy than PGD, PGD was fooled by masked gradients.
    """
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape

    def margin(logits: torch.Tensor) -> torch.Tensor:
        true = logits.gather(1, y[:, None])[:, 0]
        other = logits.clone()
        other.scatter_(1, y[:, None], -float("inf"))
        return true - other.max(1).values

    stripes = (torch.randint(0, 2, (n, c, 1, w), generator=gen).float() * 2 - 1) * eps
    xa = torch.clamp(x + stripes, 0, 1)
    m = margin(predict(xa))
    for i in range(queries):
        active = m > 0
        if not active.any():
            break
        frac = p_init * (0.5 ** (i * 8 // max(queries, 1)))
        s = max(1, int(round((frac * h * w) ** 0.5)))
        r0 = int(torch.randint(0, h - s + 1, (1,), generator=gen))
        c0 = int(torch.randint(0, w - s + 1, (1,), generator=gen))
        delta = xa - x
        patch = (torch.randint(0, 2, (n, c, 1, 1), generator=gen).float() * 2 - 1) * eps
        delta[:, :, r0 : r0 + s, c0 : c0 + s] = patch
        cand = torch.clamp(x + delta, 0, 1)
        mc = margin(predict(cand))
        better = (mc < m) & active
        xa[better] = cand[better]
        m = torch.where(better, mc, m)
    return xa
