"""A bench configuration checked before the first expensive step: one line naming what is wrong.

Why apart from :mod:`harness.bench`: every check here used to fire late — an unknown variant after calibration
(and after the LAAQ search when ``laaq`` came first), a malformed ``--plan`` file after training and after
``run.json`` was written, ``--eval-samples -5`` never (it evaluated ``x[:-5]``), a missing cross compiler after
training, calibration and the search. :func:`check_config` runs when a :class:`harness.bench.BenchConfig` is
made (CLI, farm and bundle alike), :func:`check_target` once the target is resolved; both before any data is
loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.bench import BenchConfig
    from harness.profile import TargetProfile

SQUARE_ON = ("auto", "stand-in", "artefact")


def check_config(cfg: BenchConfig) -> None:
    """Every field that can be checked without the model or the device; raises ValueError (one line)."""
    from harness.layer_latency import parse_latency_budget
    from harness.variants import builtin_variants
    from laaq.quant.plan import QuantPlan
    from laaq.robustness import attack_device

    parse_latency_budget(cfg.latency_budget)  # a bad spec stops here, before any work
    attack_device(cfg.attack_device)  # so does cuda on a machine without a GPU
    if cfg.square_on not in SQUARE_ON:
        raise ValueError(f"square_on must be one of {', '.join(SQUARE_ON)}, got {cfg.square_on!r}")
    cfg.model_source()  # so does a missing model file, factory spec or weights file
    if cfg.eval_samples < 0:
        raise ValueError(f"--eval-samples must be >= 0 (0 = the whole test split), got {cfg.eval_samples}")
    if cfg.batch_large < 1:
        raise ValueError(f"--batch-large must be >= 1, got {cfg.batch_large}")
    if not cfg.variants and not cfg.plan_files:
        raise ValueError("no variants to measure: give --variants (e.g. fp32,int8,laaq) or --plan FILE")
    unknown = [v for v in cfg.variants if v not in builtin_variants()]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; built-in variants are {', '.join(builtin_variants())} "
                         "(add plans with --plan FILE)")
    for p in cfg.plan_files:
        try:
            QuantPlan.from_file(p)
        except (OSError, ValueError) as e:
            raise ValueError(f"plan file {p}: {' '.join(str(e).split())[:200]}") from None


def check_target(profile: TargetProfile) -> TargetProfile:
    """What the resolved target needs before any work: its cross compiler on PATH (returns ``profile``)."""
    from harness.backend.base import host_linker

    host_linker(profile)  # CompileError naming the compiler and the package that provides it
    return profile
