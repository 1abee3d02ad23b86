"""Robust accuracy you can trust: one typed entry point, :func:`evaluate`, for every robust figure.

Robust accuracy is the **per-image worst case over an attack ensemble** (AutoAttack's recipe, run with
the maintained ``torchattacks`` implementations):

1. white-box members on the differentiable stand-in of the deployed function — the bit-exact STE twin
   of an integer variant, the float model of a float variant: (PGD-CE for reference), APGD-CE,
   APGD-T (targeted DLR over the top-k classes), FAB-T in ``thorough``;
2. Square (gradient-free, AutoAttack's p_init 0.8 schedule, thousands of queries) run **black-box on
   the deployed function** — the compiled artefact in ``bench``, or, where that is slow or remote, a
   :class:`StandIn` that computes the same function (the bit-exact twin of an integer artefact, the float
   model of an fp32 one): Square's final examples are then judged on the artefact like every other
   member's, and a random sample of Square's own queries is re-run on the artefact and must agree
   (bit-identical outputs for integer variants), or the evaluation stops with :class:`StandInMismatch`.

Each member attacks only the images that survived the earlier ones (as AutoAttack does), and every
adversarial example is judged on the **deployed function's own outputs**, so the twin only proposes
directions and the artefact decides. Alongside, the cheap sanity checks of Carlini et al. 2019 ("On
Evaluating Adversarial Robustness"): an ε-curve that must fall to ~0, a stronger attack that must not
find significantly more, a black-box attack that must not beat the white-box ensemble, and a transfer
attack from the float model that must not beat the white-box attack on the twin — each decided by an
exact McNemar test on per-image outcomes, never by a fixed threshold.

A resumable state file (one ``.npz`` per evaluation, like auto-attack's) keeps each finished stage, so
a run killed mid-evaluation restarts from the last stage done.

Modules by job: :mod:`~laaq.robustness.config` (presets, the evaluation config), :mod:`~laaq.robustness.members`
(the attacks), :mod:`~laaq.robustness.stand_in` (Square's stand-in and its check), :mod:`~laaq.robustness.ensemble`
(members on the survivors, the state file), :mod:`~laaq.robustness.checks` (sanity checks),
:mod:`~laaq.robustness.result` and :mod:`~laaq.robustness.runner` (:func:`evaluate`, :func:`rejudge`).
"""

from laaq.robustness.config import DATA_RANGE, PRESETS, AttackError, AttackPreset, EvalConfig, curve_radii, get_preset
from laaq.robustness.ensemble import TransferCache, torch_threads
from laaq.robustness.members import Predict, attack_device
from laaq.robustness.result import Check, RobustResult
from laaq.robustness.runner import evaluate, rejudge
from laaq.robustness.stand_in import StandIn, StandInCheck, StandInMismatch

__all__ = ["DATA_RANGE", "PRESETS", "AttackError", "AttackPreset", "Check", "EvalConfig", "Predict", "RobustResult",
           "StandIn", "StandInCheck", "StandInMismatch", "TransferCache", "attack_device", "curve_radii", "evaluate",
           "get_preset", "rejudge", "torch_threads"]
