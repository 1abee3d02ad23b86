"""The sanity checks of Carlini et al. 2019 on the per-image outcomes: convergence, transfer, black-box
and the ε-curve, each decided by an exact McNemar test or an interval, never a fixed threshold.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from laaq.example_log import ExampleLog
from laaq.robustness.config import EvalConfig, curve_radii
from laaq.robustness.ensemble import TransferCache, _Ensemble, _State
from laaq.robustness.members import _correct, _white_box_attacks
from laaq.robustness.result import Check
from laaq.stats import PairedTest, paired_test, wilson


def _beats(name: str, what: str, other_ok: np.ndarray, white_ok: np.ndarray) -> Check:
    """Does ``other`` find significantly more adversarial images than the white-box ensemble? (McNemar)"""
    t: PairedTest = paired_test(white_ok, other_ok)  # only_a: white-box correct where other broke it
    bad = t.only_a > t.only_b and t.significant()
    detail = (f"{what}: {t.only_a} images broken only by it vs {t.only_b} only by the white-box ensemble, "
              f"n={t.n}, McNemar p={t.p_value:.2g}")
    return Check(name, not bad, detail)


def _sanity_checks(cfg: EvalConfig, wb: torch.nn.Module, dep: torch.nn.Module, transfer_source: torch.nn.Module | None,
                   x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, white_alive: np.ndarray, n_classes: int,
                   state: _State, transfers: TransferCache, log: ExampleLog | None = None,
                   device: torch.device | None = None) -> list[Check]:
    """Convergence (a stronger white-box attack) and transfer (from the float model), on the check subset."""
    out = []
    xs, ys = x[idx], y[idx]
    white_sub = white_alive[idx]
    stronger = state.get("stronger_ok")
    if stronger is None:
        sub = _Ensemble(xs, ys, dep, cfg.eps, cfg.batch, log, "stronger", device=device)
        for name, attack in _white_box_attacks(cfg.preset.stronger(), wb, cfg.eps, n_classes, cfg.seed + 1):
            sub.run(attack, name=name)
        stronger = sub.alive
        state.put(stronger_ok=stronger)
    out.append(_beats("convergence", "2x steps, +1 restart", stronger.astype(bool), white_sub))
    if transfer_source is not None:
        tr = state.get("transfer_ok")
        if tr is None:
            sub = _Ensemble(xs, ys, dep, cfg.eps, cfg.batch, log, "transfer", device=device)
            sub.alive = np.ones(len(xs), dtype=bool)  # every image's source examples, judged on the deployed
            replaying = log is not None and log.replaying
            crafted = [(n, None) for n, _ in _white_box_attacks(cfg.preset, dep, cfg.eps, n_classes, 0)] \
                if replaying else transfers.examples(transfer_source, xs, ys, cfg, n_classes, device)
            for name, xa in crafted:
                sub.run(None, name=name, given=xa)
            tr = sub.alive & _correct(dep, xs, ys)
            state.put(transfer_ok=tr)
        out.append(_beats("transfer", "transfer from the float model", tr.astype(bool), white_sub))
    return out


def _eps_curve(cfg: EvalConfig, wb: torch.nn.Module, dep: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               n_classes: int, state: _State, log: ExampleLog | None = None, device: torch.device | None = None
               ) -> list[tuple[float, float, int]]:
    """Robust accuracy at several radii (white-box members at the curve's step budget, 3 APGD-T targets)."""
    pre = cfg.preset
    m = min(pre.curve_samples, len(x))
    xs, ys = x[:m], y[:m]
    light = replace(pre, pgd_steps=pre.curve_steps if not (pre.apgd_ce_steps or pre.apgd_t_steps) else 0,
                    apgd_ce_steps=pre.curve_steps if pre.apgd_ce_steps else 0, apgd_ce_restarts=1,
                    apgd_t_steps=pre.curve_steps if pre.apgd_t_steps else 0, apgd_t_restarts=1,
                    apgd_t_targets=min(3, pre.apgd_t_targets), fab_t_steps=0, square_queries=0)
    curve = []
    for r in curve_radii(cfg.eps, pre.curve_factors):
        saved = state.get(f"curve_{r:g}")
        if saved is None:
            sub = _Ensemble(xs, ys, dep, r, cfg.batch, log, f"curve:{r:g}", device=device)
            for name, attack in _white_box_attacks(light, wb, r, n_classes, cfg.seed + 3):
                sub.run(attack, name=name)
            saved = sub.alive
            state.put(**{f"curve_{r:g}": saved})
        curve.append((r, float(saved.mean()), m))
    return curve


def _curve_check(curve: list[tuple[float, float, int]]) -> Check:
    """Accuracy must not rise with ε beyond its interval, and must reach ~0 at the largest radius."""
    rising = [(e0, e1) for (e0, a0, n0), (e1, a1, _) in zip(curve, curve[1:], strict=False)
              if a1 > wilson(round(a0 * n0), n0)[1]]
    end_eps, end_acc, _ = curve[-1]
    ok = not rising and end_acc <= 0.05
    detail = f"accuracy {end_acc:.3f} at eps={end_eps:g}"
    if rising:
        detail += f"; rises between eps {rising[0][0]:g} and {rising[0][1]:g}"
    return Check("eps-curve", ok, detail)
