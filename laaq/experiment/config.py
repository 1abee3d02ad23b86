"""What determines the experiment's numbers, as one typed, frozen configuration.

The defaults are the issue's protocol on the model where layers matter: VGG8 (no layer above 27 % of
the weights) PGD-AT trained on MNIST-5k at ε = 0.3 with its measured recipe (6 epochs, peak lr 3e-3,
PGD-7), budgets of {2.5, 3, 3.5, 4} average weight bits and one BOPs budget, five seeds.

The attack is the ``apgd`` preset (APGD-CE 50 + APGD-T 50 × top-3) on 500 test images per seed (paired: the same
images for every method), not ``standard``: the grid is 2 models × 5 seeds × ~120 plans, and ``standard`` costs
~2.8 s per VGG8 twin image on one core (measured: 284 s for 100 images), i.e. ~470 core-hours at 500 images.
``--attack standard`` runs it where compute allows; the ``apgd`` grid itself is core-days (a cluster: ``--address``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from laaq.attacks import PGDConfig, pgd_step
from laaq.robustness import PRESETS, EvalConfig
from laaq.search import Budget, CalibrationRecipe, SearchConfig, latency_budget

#: every quantization method of the F2 comparison, in table order (LAAQ's variants — the textbook norm-product
#: bound, the knapsack without refinement — before LAAQ)
F2_METHODS = ("uniform", "uniform-clip", "mse", "hessian", "sensitivity", "output-error", "random-best", "norm-product",
              "laaq-ilp", "laaq")
#: F2 methods defined for layer chains only (no residual additions): left out of the ResNet configuration
CHAIN_ONLY = ("norm-product",)
#: the methods LAAQ is compared with ("random-best": best of N random plans, N = LAAQ's exact-loss evaluations)
BASELINES = ("uniform", "uniform-clip", "mse", "hessian", "sensitivity", "output-error", "random-best")
MODEL_KINDS = ("pgd-at", "plain")
#: bumped when what a unit's numbers mean changes (its digest then refuses units made before)
PROTOCOL = 2
#: suffix of a method run with per-output-channel-group widths, e.g. ``laaq@g16`` (groups of 16 channels)
GROUP_SUFFIX = "@g"


def split_method(method: str) -> tuple[str, int]:
    """``"mse@g16"`` → ``("mse", 16)``; ``"mse"`` → ``("mse", 0)`` (one width per layer)."""
    base, _, g = method.partition(GROUP_SUFFIX)
    if base not in F2_METHODS or (g and (not g.isdigit() or int(g) < 1)):
        raise ValueError(f"unknown method {method!r}: one of {', '.join(F2_METHODS)}, optionally with "
                         f"{GROUP_SUFFIX}N (per-channel-group widths, groups of N output channels)")
    return base, int(g or 0)


def is_baseline(method: str) -> bool:
    """A baseline, at layer or channel-group granularity (LAAQ, its ablations, fp32 and F1 units are not)."""
    base = method.partition(GROUP_SUFFIX)[0]
    return base in BASELINES


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines the experiment's numbers.

    ``budgets``: average weight bits; ``bops_fractions``: budgets in what the hardware pays, bit operations
    per sample at most these fractions of the uniform-8 model's (8-bit activations), at several levels so
    that a method's margin is not read off one point; ``plain_eps``: the plain model's
    radius (None: matched — the radius of the grid where its fp32 robust accuracy comes closest to the
    PGD-AT model's at ``evaluation.eps`` under the evaluation's preset, measured on training images held out of
    training and calibration, never test images);
    ``f1_bits``: the uniform widths of F1, each with max-abs and MSE-optimal clipping;
    ``latency_fractions``: budgets in measured batch-1 latency, each a position between the fastest plan the
    table allows (0) and the uniform-8 model (1) — positions, not fractions of int8, because on a target where
    only some widths change a layer's kernel (x86 AVX2: 8 bits vs ≤ 7) the reachable range is narrow;
    ``latency_table``: ``(layer, bits, ms)`` rows measured on ``latency_source``'s device by the harness
    (``laaq-bench experiment --latency-target``); no table, no latency budgets.
    """

    dataset: str = "mnist5k"
    data_dir: str | None = None
    arch: str = "vgg8"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    models: tuple[str, ...] = MODEL_KINDS
    budgets: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0)
    bops_fractions: tuple[float, ...] = (0.3, 0.4, 0.5)
    latency_fractions: tuple[float, ...] = ()
    latency_table: tuple[tuple[str, int, float], ...] = ()
    latency_source: str = ""
    methods: tuple[str, ...] = F2_METHODS
    f1_bits: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)
    train_epochs: int = 6
    train_lr: float = 3e-3
    train_pgd: PGDConfig = field(default_factory=lambda: PGDConfig(eps=0.3, step_size=pgd_step(0.3, 7), steps=7))
    evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(PRESETS["apgd"], 0.3, checks=False))
    plain_eps: float | None = None
    eps_grid: tuple[float, ...] = (0.02, 0.05, 0.075, 0.1, 0.15, 0.2)
    calibration: CalibrationRecipe = field(default_factory=CalibrationRecipe)
    n_eval: int = 500
    random_count: int = 4
    search: SearchConfig = field(default_factory=SearchConfig)

    @classmethod
    def quick(cls) -> ExperimentConfig:
        """Small enough for a test: sklearn digits (8×8), the tiny CNN, two seeds, short attacks."""
        p = PGDConfig(eps=0.1, step_size=0.03, steps=4)
        return cls(dataset="digits", arch="tinycnn", seeds=(0, 1), budgets=(3.0,), bops_fractions=(0.5,),
                   f1_bits=(8, 2), train_epochs=5, train_lr=1e-2, train_pgd=p,
                   evaluation=EvalConfig(PRESETS["quick"], 0.1, checks=False), eps_grid=(0.02, 0.05),
                   calibration=CalibrationRecipe(samples=48, attack_steps=4, holdout=48), n_eval=100,
                   random_count=2, search=SearchConfig(clips=(1.0, 0.8, 0.6), refine_sweeps=1, refine_max_evals=30,
                                                       hessian_max_iter=10))

    @classmethod
    def cifar(cls, data_dir: str) -> ExperimentConfig:
        """CIFAR-10 / ResNet-20 at ε = 8/255, the standard ensemble (needs real compute)."""
        e = 8 / 255
        return cls(dataset="cifar10", data_dir=data_dir, arch="resnet20", train_epochs=30, train_lr=1e-2,
                   train_pgd=PGDConfig(eps=e, step_size=2 / 255, steps=7),
                   evaluation=EvalConfig(PRESETS["standard"], e, checks=False), n_eval=1000,
                   eps_grid=(1 / 255, 2 / 255, 4 / 255), methods=tuple(m for m in F2_METHODS if m not in CHAIN_ONLY))

    def budget_labels(self) -> list[str]:
        """Labels of the F2 budgets, in order: ``bits2.5`` …, then ``bops0.3`` …, then ``lat0.5`` … (with a table)."""
        lat = [f"lat{f:g}" for f in self.latency_fractions] if self.latency_table else []
        return [f"bits{b:g}" for b in self.budgets] + [f"bops{f:g}" for f in self.bops_fractions] + lat

    def latency(self) -> dict[str, dict[int, float]]:
        """The latency table as ``table[layer][bits] -> ms`` (empty without one)."""
        out: dict[str, dict[int, float]] = {}
        for layer, bits, ms in self.latency_table:
            out.setdefault(layer, {})[int(bits)] = float(ms)
        return out

    def latency_digest(self) -> str:
        """Which table a latency unit was searched under (its units are redone when the table changes)."""
        body = json.dumps([self.latency_source, [list(r) for r in self.latency_table]])
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    def digest(self) -> str:
        """Hash of what makes a finished unit reusable: everything except which seeds, models, budgets and
        methods are run (those are in each unit's key, so a later run may add more of them)."""
        # the latency table is not in it: a latency unit records its table's digest and is redone under another
        d = asdict(replace(self, seeds=(), models=(), budgets=(), bops_fractions=(), methods=(), f1_bits=(),
                           latency_fractions=(), latency_table=(), latency_source=""))
        for k in ("latency_fractions", "latency_table", "latency_source"):  # added later: old digests unchanged
            del d[k]
        # protocol 2: models trained without the held-out matching images, radius matched with the evaluation
        # preset, norm-product in the grid — units of protocol 1 are not reused
        d["protocol"] = PROTOCOL
        if d["search"]["group_size"] == 0:  # added later; methods choose groups themselves (``laaq@g16``)
            del d["search"]["group_size"]
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def latency_range(table: dict[str, dict[int, float]]) -> tuple[float, float]:
    """(fastest plan, uniform-8 plan) summed table latency in ms."""
    return sum(min(row.values()) for row in table.values()), sum(row[8] for row in table.values())


def budget_for(label: str, bops_int8: float, latency: dict[str, dict[int, float]] | None = None) -> Budget:
    """The :class:`Budget` behind a label (``bops_int8``: the uniform-8 model's BOPs per sample; ``latency``: the
    per-layer table ``lat…`` labels are positions on)."""
    if label.startswith("bits"):
        return Budget(avg_bits=float(label[4:]))
    if label.startswith("bops"):
        return Budget(bops=float(label[4:]) * bops_int8)
    if label.startswith("lat"):
        if not latency:
            raise ValueError(f"budget {label!r} needs a latency table (laaq-bench experiment --latency-target)")
        fast, int8 = latency_range(latency)
        return latency_budget(latency, fast + float(label[3:]) * (int8 - fast))
    raise ValueError(f"unknown budget label {label!r}")
