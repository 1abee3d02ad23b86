"""``laaq-bench experiment``: the LAAQ study's grid (F1, F2) from the command line, and the one thing it needs
from the harness — the per-layer latency table of a target, measured on its device, for the latency budgets.

Why here and not in :mod:`laaq.experiment`: the method package never imports the harness (data flows one way);
the table is measured here, once, and handed to the grid as data (:attr:`ExperimentConfig.latency_table`).
"""

from __future__ import annotations

from dataclasses import replace

import click
from click.core import ParameterSource

from harness.options import Fail, _run
from laaq.experiment.config import F2_METHODS as F2_METHODS_DEFAULT
from laaq.experiment.config import ExperimentConfig, split_method


def with_latency_table(cfg: ExperimentConfig, positions: tuple[float, ...], target: str) -> ExperimentConfig:
    """``cfg`` with latency budgets at ``positions`` on ``target``'s per-layer table (batch 1, every candidate
    width), timed on the target's device for the experiment's architecture (weights do not change kernels: an
    untrained model of the same shapes gives the same table; cached per layer and scheme)."""
    from harness.devices import open_device
    from harness.layer_latency import layer_table
    from harness.profile import resolve
    from laaq.data import load_dataset
    from laaq.importer import model_graph
    from laaq.models import build_model
    from laaq.search.solver import CANDIDATE_BITS

    if any(not 0 <= p <= 1 for p in positions):
        raise ValueError(f"--latency positions must lie in [0, 1] (0: the fastest plan, 1: int8), got {positions}")
    profile = resolve(target)
    data = load_dataset(cfg.dataset, seed=0, data_dir=cfg.data_dir)
    graph = model_graph(build_model(cfg.arch, data.input_shape, data.num_classes), data.input_shape)
    with open_device(profile, progress=False) as session:
        click.echo(f"[{profile.name}] per-layer latency table for {cfg.arch} ({session.measured_as}, batch 1) ...")
        table = layer_table(graph, profile, session, CANDIDATE_BITS)
        how = session.measured_as
    rows = tuple(sorted((t.layer, t.bits, t.median_ms) for t in table))
    source = f"{profile.name}, {how}, batch 1, per-layer medians (harness.layer_latency)"
    return replace(cfg, latency_fractions=positions, latency_table=rows, latency_source=source)


@click.command()
@click.option("--data-dir", type=click.Path(), default=None,
              help="CIFAR-10 directory: run the ResNet-20 / eps=8/255 experiment instead of MNIST-5k.")
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Comma list of seeds (>= 5 for claims).")
@click.option("--budgets", default="2.5,3,3.5,4", show_default=True, help="Average-weight-bit budgets (comma list).")
@click.option("--bops", default="0.3,0.4,0.5", show_default=True,
              help="Budgets in bit operations: at most these fractions of the int8 model's (comma list; 0 = none).")
@click.option("--latency", default="0.25,0.5,0.75", show_default=True,
              help="Budgets in measured batch-1 latency on --latency-target: each a position between the fastest "
                   "plan the per-layer table allows (0) and the int8 model (1) (comma list; empty = none).")
@click.option("--latency-target", default="x86-avx2", show_default=True,
              help="Target whose per-layer latency table (timed on its device, cached) the latency budgets use: "
                   "one where widths change latency (x86-avx2: <= 7-bit layers take the vpmaddubsw path); none = no "
                   "latency budgets.")
@click.option("--models", default="pgd-at,plain", show_default=True,
              help="Model kinds: pgd-at (eps of the data set) and/or plain (at the radius matched to pgd-at's "
                   "fp32 robust accuracy, on training images held out of training).")
@click.option("--methods", default=",".join(F2_METHODS_DEFAULT), show_default=True,
              help="F2 methods; random-best draws as many random plans as LAAQ's refinement evaluates and keeps "
                   "the best by adversarial calibration loss. Suffix @gN (e.g. laaq@g16, mse@g16): one width and "
                   "clip per group of N output channels instead of per layer.")
@click.option("--f1-bits", default="8,7,6,5,4,3,2", show_default=True,
              help="F1's uniform widths (each with max-abs and MSE-optimal clipping); empty for none.")
@click.option("--arch", default=None, help="Model (default vgg8 on MNIST-5k: 8 layers, none above 27 % of weights).")
@click.option("--attack", default="apgd", show_default=True,
              type=click.Choice(["quick", "apgd", "standard", "thorough"]),
              help="Robust-accuracy preset (see `bench --help`; apgd: APGD-CE 50 + APGD-T 50 x top-3, ~6x cheaper "
                   "than standard, for grids of many plans); the sanity checks run in `bench`, not here.")
@click.option("--n-eval", type=int, default=None, help="Test images (default 200 MNIST, 1000 CIFAR-10, 100 quick).")
@click.option("--quick", is_flag=True,
              help="Minutes-long smoke version (sklearn digits, tiny CNN, 2 seeds, 2 budgets, quick attack).")
@click.option("--combine", "combine_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Instead of running: merge earlier --out folders (same configuration, e.g. one process per "
                   "seed) into --out.")
@click.option("--out", "out", default="results/experiment", show_default=True, type=click.Path())
@click.option("--executor", type=click.Choice(["ray", "local"]), default="ray", show_default=True,
              help="Who computes the units. ray: each unit a Ray task (an embedded local Ray on this machine's "
                   "cores, or the cluster at --address), retried if its worker dies; local: one at a time in this "
                   "process (debugging). Units are identical either way; only the driver writes them.")
@click.option("--address", default=None, envvar="RAY_ADDRESS",
              help="Join the Ray cluster at HOST:PORT (started with `ray start --head`) instead of a local Ray.")
@click.option("--workers", type=int, default=0, show_default=True,
              help="At most this many units at once (0: the cluster's CPUs; each unit holds one CPU and runs "
                   "torch on one thread).")
@click.option("--attack-device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where the attacks run (auto: a CUDA GPU when torch sees one; each Ray unit then holds a GPU).")
def experiment(data_dir, seeds, budgets, bops, latency, latency_target, models, methods, f1_bits, arch, attack, n_eval,
               quick, combine_dirs, out, executor, address, workers, attack_device) -> None:
    """LAAQ vs every baseline at several budgets (F2) and uniform widths on plain vs PGD-AT models (F1).

    Budgets in three kinds: average weight bits, BOPs, and latency measured on a target (per-layer table);
    every plan's BOPs, table latency and weight bytes are reported beside its accuracy, with a Pareto plot.
    F2: uniform (+ MSE clip), MSE, HAWQ-V3 Hessian, one-layer sensitivity, best-of-N random at LAAQ's search
    time, LAAQ knapsack-only and LAAQ, at each budget, with paired intervals (bootstrap over seeds x images and
    t over seeds) of LAAQ's difference to each baseline and to the best one. F1: uniform widths x {max-abs,
    MSE-optimal clip}, absolute and relative drops, per-layer weight kurtosis. Every quantized model is
    evaluated on its bit-exact twin with the attack ensemble. Resumable: each finished unit is a file under
    OUT/units/; a re-run continues, and may add seeds, budgets or methods.
    """
    from laaq.experiment import ExperimentConfig, combine, make_executor, run_experiment
    from laaq.robustness import attack_device as attack_device_of
    from laaq.robustness import get_preset

    def ints(text: str) -> tuple[int, ...]:
        return tuple(int(v) for v in text.split(",") if v.strip())

    def floats(text: str, name: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"expected a comma list of numbers, got {text!r}", param_hint=name) from None

    if quick:
        cfg = ExperimentConfig.quick()
    else:
        cfg = ExperimentConfig.cifar(data_dir) if data_dir else ExperimentConfig()
        cfg = replace(cfg, seeds=ints(seeds), budgets=floats(budgets, "--budgets"),
                      bops_fractions=tuple(f for f in floats(bops, "--bops") if f > 0),
                      f1_bits=ints(f1_bits), arch=arch or cfg.arch,
                      evaluation=replace(cfg.evaluation, preset=_run(get_preset, attack)))
    kinds = tuple(m.strip() for m in models.split(",") if m.strip())
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    def _known_method(m: str) -> bool:
        try:
            return bool(split_method(m))
        except ValueError:
            return False

    bad = [k for k in kinds if k not in ("pgd-at", "plain")] + [m for m in chosen if not _known_method(m)]
    if bad or not kinds:
        raise Fail(f"unknown model kind or method {bad}; kinds: pgd-at, plain; "
                   f"methods: {', '.join(F2_METHODS_DEFAULT)}, each optionally @gN (groups of N channels)")
    cfg = replace(cfg, models=kinds, methods=chosen, n_eval=n_eval or cfg.n_eval)
    explicit = click.get_current_context().get_parameter_source("latency") == ParameterSource.COMMANDLINE
    positions = tuple(floats(latency, "--latency")) if (explicit or not quick) else ()
    if positions and latency_target != "none":
        cfg = _run(with_latency_table, cfg, positions, latency_target)
    if combine_dirs:
        _, summary = _run(combine, list(combine_dirs), cfg, out)
    else:
        device = _run(attack_device_of, attack_device)
        runner = _run(make_executor, executor, address, workers, 1.0 if device == "cuda" else 0.0)
        _, summary = _run(run_experiment, cfg, out, executor=runner, device=device)
    click.echo(summary)
    click.echo(f"\nresults: {out}")
