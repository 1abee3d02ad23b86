"""The ensemble's members as functions ``(x, y) -> x_adv`` (torchattacks' APGD-CE, APGD-T, FAB-T,
Square; the project's PGD), with the adapters and batching every stage of the evaluation shares.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from laaq.attacks import PGDConfig, pgd, pgd_step
from laaq.robustness.config import DATA_RANGE, AttackError, AttackPreset
from laaq.robustness.stand_in import StandIn, _QuerySample

Predict = Callable[[torch.Tensor], torch.Tensor]


class _Meter:
    """Counts model calls of the running attack member into a progress bar (steps or queries, with ETA)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None

    def start(self, desc: str, total: int) -> None:
        self.close()
        self.bar = tqdm(total=total, desc=desc, unit="call", leave=False, disable=not self.enabled)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Metered(torch.nn.Module):
    """``inner`` whose every forward call ticks a :class:`_Meter` (torchattacks calls the model once per step)."""

    def __init__(self, inner: torch.nn.Module, meter: _Meter) -> None:
        super().__init__()
        self.inner, self.meter = inner, meter
        # eval, as ``inner`` is: torchattacks restores the mode it found after each attack, and a wrapper left in
        # (nn.Module's default) training mode would put the caller's model into training mode (batch-norm on batch
        # statistics) — the Square stand-in check caught exactly that
        self.train(inner.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.meter.tick()
        return self.inner(x)


def _expected_calls(preset: AttackPreset, name: str, n_classes: int) -> int:
    """Model calls per batch a member makes at most (its progress bar's total): steps × restarts (× targets)."""
    k = max(1, min(n_classes - 1, preset.apgd_t_targets))
    return {"apgd-ce": (preset.apgd_ce_steps + 2) * preset.apgd_ce_restarts,
            "apgd-t": (preset.apgd_t_steps + 2) * preset.apgd_t_restarts * k,
            "fab-t": (preset.fab_t_steps + 2) * max(1, min(n_classes - 1, preset.fab_t_targets)),
            "square": (preset.square_queries + 1) * preset.square_restarts}.get(
        name, (preset.pgd_steps + 1) * preset.pgd_restarts)


class _AsModule(torch.nn.Module):
    """A predictor as an nn.Module with one (empty) parameter, so torchattacks can find its device."""

    def __init__(self, fn: Predict, no_grad: bool = False) -> None:
        super().__init__()
        self.fn = fn
        self.no_grad = no_grad
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.no_grad:
            with torch.no_grad():
                return torch.as_tensor(self.fn(x), dtype=torch.float32)
        return self.fn(x)


def _torchattacks():
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - the Makefile installs it
        raise AttackError("the attack library torchattacks is missing: `pip install --no-deps torchattacks==3.5.1` "
                          "(--no-deps: its torchvision requirement cannot coexist with the CPU torch build); "
                          "`make` does this") from e
    return torchattacks


def _on(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on the attack device: itself on the CPU, else a copy there (the caller's model stays put)."""
    if device.type == "cpu":
        return model
    import copy

    return copy.deepcopy(model).to(device)


def attack_device(name: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is refused up front."""
    if name not in ("auto", "cpu", "cuda"):
        raise AttackError(f"attack device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise AttackError(f"--attack-device cuda, but torch {torch.__version__} sees no CUDA GPU (the CPU build, or "
                          "no driver); use --attack-device auto or cpu")
    return name


def _num_classes(predict: Predict, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(predict(x[:1]).shape[1])


def _white_box_attacks(preset: AttackPreset, model: torch.nn.Module, eps: float, n_classes: int, seed: int
                       ) -> list[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]:
    """The gradient members, in AutoAttack's order, each a function (x, y) -> x_adv."""
    ta = _torchattacks()
    out: list[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = []
    k = max(1, min(n_classes - 1, preset.apgd_t_targets))
    if preset.pgd_steps:
        pcfg = PGDConfig(eps=eps, step_size=pgd_step(eps, preset.pgd_steps), steps=preset.pgd_steps,
                         restarts=preset.pgd_restarts, seed=seed)

        def run_pgd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return pgd(model, x, y, pcfg, generator=torch.Generator().manual_seed(seed))

        out.append((f"pgd-{preset.pgd_steps}", run_pgd))
    if preset.apgd_ce_steps:
        a = ta.APGD(model, norm="Linf", eps=eps, steps=preset.apgd_ce_steps, n_restarts=preset.apgd_ce_restarts,
                    loss="ce", seed=seed)
        out.append(("apgd-ce", a))
    if preset.apgd_t_steps and n_classes > 2:
        t = ta.APGDT(model, norm="Linf", eps=eps, steps=preset.apgd_t_steps, n_restarts=preset.apgd_t_restarts,
                     seed=seed, n_classes=n_classes)
        t.n_target_classes = k
        out.append(("apgd-t", t))
    if preset.fab_t_steps and n_classes > 2:
        f = ta.FAB(model, norm="Linf", eps=eps, steps=preset.fab_t_steps, n_restarts=1, multi_targeted=True,
                   n_classes=n_classes, seed=seed)
        f.n_target_classes = max(1, min(n_classes - 1, preset.fab_t_targets))
        out.append(("fab-t", f))
    return out


def _square(preset: AttackPreset, deployed: torch.nn.Module, eps: float, seed: int):
    ta = _torchattacks()
    return ta.Square(deployed, norm="Linf", eps=eps, n_queries=preset.square_queries,
                     n_restarts=preset.square_restarts, p_init=preset.square_p_init, loss="margin", seed=seed)


def _square_model(stand_in: StandIn | None, deployed: torch.nn.Module, x: torch.Tensor, seed: int
                  ) -> tuple[torch.nn.Module, _QuerySample | None]:
    """What Square queries: the deployed function, or the stand-in with a sample of its queries kept."""
    if stand_in is None:
        return deployed, None
    row_bytes = max(1, x[0].numel() * 4)
    sample = _QuerySample(min(stand_in.max_sample, max(stand_in.min_sample, (256 << 20) // row_bytes)), seed)

    def query(t: torch.Tensor) -> torch.Tensor:
        out = np.asarray(stand_in.raw(t))
        sample.offer(t, out)
        return torch.as_tensor(stand_in.to_logits(out), dtype=torch.float32)

    return _AsModule(query, no_grad=True).eval(), sample


def _batched(attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch: int, device: torch.device | None = None) -> torch.Tensor:
    """The attack on ``x`` in batches, on ``device`` (the attack device); the examples come back to the CPU."""
    if len(x) == 0:
        return x.clone()
    dev = device or x.device
    return torch.cat([attack(x[i : i + batch].to(dev), y[i : i + batch].to(dev)).detach().cpu()
                      for i in range(0, len(x), batch)])


def _correct(predict: Predict, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    if len(x) == 0:
        return np.zeros(0, dtype=bool)
    with torch.no_grad():
        return (torch.as_tensor(predict(x)).argmax(1) == y).numpy().astype(bool)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip into the ε-ball and the data range: a library bug must never yield an invalid example."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(*DATA_RANGE)
