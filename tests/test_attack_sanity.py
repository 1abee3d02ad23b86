"""Evaluation hygiene: quantized models mask gradients easily, so the attack itself is checked.

On a tiny trained model and its bit-exact twin: ε = 0 gives clean accuracy; accuracy does not rise
with ε or with steps (same seeds, so the comparisons are paired); the hand-written PGD does
match torchattacks' PGD on the same inputs (the ensemble's own checks are in test_robustness.py).
"""

from __future__ import annotations

import pytest
import torch

from laaq.attacks import PGDConfig, pgd
from laaq.data import load_digits
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_graph
from laaq.quant.twin import Twin
from laaq.train import TrainConfig, accuracy, train_or_load


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Twin, torch.Tensor, torch.Tensor]:
    data = load_digits(0)
    cfg = TrainConfig(arch="tinycnn", epochs=10, lr=1e-2, adversarial=False, seed=0)
    model, _, _ = train_or_load(data, cfg, cache_dir=tmp_path_factory.mktemp("ckpt"), progress=False)
    graph = model.to_graph()
    plan = QuantPlan.uniform([n.name for n in graph.weighted()], 4)
    twin = Twin(quantize_graph(graph, plan, data.x_train[:128])).eval()
    return twin, data.x_test[:80], data.y_test[:80]


def _pgd_acc(twin: Twin, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> float:
    cfg = PGDConfig(eps=eps, step_size=eps / 4 if eps else 0.0, steps=steps, seed=7)
    return accuracy(twin, pgd(twin, x, y, cfg), y)


def test_eps_zero_equals_clean(setup: tuple[Twin, torch.Tensor, torch.Tensor]) -> None:
    twin, x, y = setup
    clean = accuracy(twin, x, y)
    assert clean > 0.6  # the model must actually work for the other checks to mean anything
    assert _pgd_acc(twin, x, y, 0.0, 10) == clean


def test_accuracy_non_increasing_in_eps(setup: tuple[Twin, torch.Tensor, torch.Tensor]) -> None:
    twin, x, y = setup
    accs = [_pgd_acc(twin, x, y, eps, 6) for eps in (0.0, 0.05, 0.15)]
    assert all(b <= a + 1e-9 for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < accs[0]  # the attack does something


def test_accuracy_non_increasing_in_steps(setup: tuple[Twin, torch.Tensor, torch.Tensor]) -> None:
    twin, x, y = setup
    accs = [_pgd_acc(twin, x, y, 0.1, steps) for steps in (1, 4, 12)]
    # more steps from the same random start; allow one sample of slack for non-monotone PGD paths
    assert all(b <= a + 1.0 / len(y) for a, b in zip(accs, accs[1:], strict=False)), accs


def test_hand_written_pgd_matches_the_library(setup: tuple[Twin, torch.Tensor, torch.Tensor]) -> None:
    """The one hand-written attack (PGD, the `quick` preset and training) against torchattacks' PGD on the
    same inputs, radius, step and steps: the two accuracies agree within a few images."""
    import torchattacks

    from laaq.robustness.members import _AsModule

    twin, x, y = setup
    eps, steps = 0.1, 10
    ours = accuracy(twin, pgd(twin, x, y, PGDConfig(eps=eps, step_size=2.5 * eps / steps, steps=steps, seed=0)), y)
    lib = torchattacks.PGD(_AsModule(twin).eval(), eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    theirs = accuracy(twin, lib(x, y), y)
    assert ours < accuracy(twin, x, y)  # both attacks do something
    assert abs(ours - theirs) <= 4 / len(y), (ours, theirs)
