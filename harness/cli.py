"""``laaq-bench``: the command line. It only parses options and calls one function per stage."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.options import (
    DEFAULT_EPS,  # noqa: F401 - public: scripts read the default radii here
    Fail,
    _attack_options,
    _eval_config,
    _run,
    _train_options,
    load,
    model_source,
    train_config,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """Benchmark adversarially robust, mixed-precision quantized networks on real hardware targets.

    Data flows one way: train (or load) a model -> search a quantization plan (LAAQ or baselines)
    -> lower to an integer Relax graph -> compile with TVM for a target -> run on its device
    (local, RPC, tracker or emulated board) -> measure latency, accuracy and PGD accuracy on the
    compiled artefact -> results/<run>/ -> reports.
    """


@main.command()
@_train_options
def train(dataset, data_dir, arch, model, weights, epochs, lr, plain, eps, seed) -> None:
    """Train (or load from the cache) a plain or PGD-adversarially-trained model."""
    from laaq.train import accuracy

    m = load(dataset, data_dir, arch, epochs, lr, plain, eps, seed, model, weights)
    acc = accuracy(m.model, m.data.x_test, m.data.y_test)
    click.echo(f"{'loaded' if m.cached else 'trained'} {m.path}  clean test accuracy {acc:.4f}")


@main.command()
@_train_options
@click.option("--bits", type=click.IntRange(2, 8), default=8, show_default=True, help="Uniform weight bits.")
@click.option("--clip", type=click.FloatRange(0.01, 1.0), default=1.0, show_default=True, help="Clipping ratio.")
@click.option("--out", "out", type=click.Path(), required=True, help="Plan JSON to write.")
def quantize(dataset, data_dir, arch, model, weights, epochs, lr, plain, eps, seed, bits, clip, out) -> None:
    """Write a uniform quantization plan (JSON) for a model; `search` writes searched ones."""
    from harness.results import atomic_write_text
    from laaq.quant.plan import QuantPlan

    names = [n.name for n in load(dataset, data_dir, arch, epochs, lr, plain, eps, seed, model, weights
                                  ).graph.weighted()]
    plan = QuantPlan.uniform(names, bits, clip)
    atomic_write_text(Path(out), plan.to_json())
    click.echo(f"wrote {out}: {plan.name} over {len(names)} layers")


@main.command()
@click.option("--target", default="x86", show_default=True, help="Name of a file in targets/.")
@_train_options
@click.option("--plan", "plan_file", type=click.Path(exists=True), default=None,
              help="Quantization plan JSON (default: fp32).")
@click.option("--batch", default=1, show_default=True)
@click.option("--out", "out", type=click.Path(), required=True, help="Where to write the exported library.")
def compile(target, dataset, data_dir, arch, model, weights, epochs, lr, plain, eps, seed, plan_file, batch,  # noqa: A001
            out) -> None:
    """Compile a model (fp32, or the integer graph of a plan) for a target and export the library.

    Builds exactly what `bench` measures for the same target and plan: the same calibration recipe,
    the same lowering for the target's int8 scheme, the same tuning database when one exists.
    """
    from harness.compile import compile_module
    from harness.lower import lower_float
    from harness.profile import resolve
    from harness.variants import Variant, quantized
    from laaq.quant.plan import QuantPlan
    from laaq.search import CalibrationRecipe

    profile = _run(resolve, target)
    m = load(dataset, data_dir, arch, epochs, lr, plain, eps, seed, model, weights)
    cfg, eps, data, model = m.cfg, m.eps, m.data, m.model
    if plan_file:
        plan = _run(QuantPlan.from_file, plan_file)
        graph = m.graph
        calib = CalibrationRecipe().make(graph, data.x_train, data.y_train, eps, seed, model=model)  # as bench does
        v = Variant(plan.name, "int", plan, _run(quantized, graph, plan, calib))
        mod = v.lower(model, data.input_shape, batch, profile)
        key = v.tuning_key(cfg.arch, data.input_shape, batch, profile)
    else:
        v = Variant("fp32", "float")
        mod, key = lower_float(model, data.input_shape, batch), v.tuning_key(cfg.arch, data.input_shape, batch, profile)
    art = _run(compile_module, mod, profile, Path(out), v.name, batch, tuning_key=key)
    click.echo(f"{art.path}: {art.size_bytes} bytes, compiled in {art.compile_s:.1f} s for {profile.name}")


@main.command()
@click.option("--target", "targets", default=("x86",), show_default=True, envvar="TARGET", multiple=True,
              help="Name of a file in targets/ (see `laaq-bench targets`). Repeat (or TARGET=\"x86 rpi4\") for "
              "several: tracker-reached ones run in parallel, the others in turn, then one comparison report.")
@_train_options
@click.option("--variants", default=None,
              help="Comma list of fp32, fp16 (GPU), int8, int7, int4 (uniform) and laaq (searched at --avg-bits). "
                   "Default: the target file's `variants` (fp32,int8,laaq; x86 adds int7, its vpmaddubsw path).")
@click.option("--plan", "plan_files", multiple=True, type=click.Path(exists=True),
              help="Extra quantization plan JSON to measure (repeatable).")
@click.option("--avg-bits", default=4.0, show_default=True, help="LAAQ budget: average weight bits.")
@click.option("--latency-budget", default="", help="LAAQ budget on the per-layer latency table measured on the "
              "target first (batch 1): milliseconds (0.05) or a fraction of the int8 model's (0.8x). Each target "
              "then gets its own plan.")
@click.option("--layer-times", is_flag=True, help="Measure the per-layer latency table (layers.csv latency_ms) "
              "without constraining the plan.")
@_attack_options
@click.option("--square-on", type=click.Choice(["auto", "stand-in", "artefact"]), default="auto", show_default=True,
              help="Who answers Square's queries. auto: a cheap stand-in that computes the same function (the "
                   "bit-exact twin; the float model for fp32) unless the local artefact is faster; stand-in: always "
                   "it; artefact: every query on the artefact (the literal, slow run). With a stand-in the artefact "
                   "judges every Square example and re-runs a sample of its queries, which must agree.")
@click.option("--square-on-device", is_flag=True, help="Same as --square-on artefact.")
@click.option("--attack-device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where the white-box attacks run (the float model or the bit-exact twin): auto = a CUDA GPU "
                   "when torch sees one. The artefact still judges every example on its own device.")
@click.option("--eval-samples", default=500, show_default=True,
              help="Test samples (0 = all); 500 gives a Wilson interval of about +-4 points at 80 %.")
@click.option("--batch-large", default=64, show_default=True, help="Larger batch for throughput and eval.")
@click.option("--repeat", default=20, show_default=True, help="time_evaluator repeats.")
@click.option("--number", default=10, show_default=True, help="Calls averaged per repeat.")
@click.option("--warmup", default=5, show_default=True, help="Untimed warm-up calls.")
@click.option("--cooldown-ms", default=0, show_default=True, help="Pause after every --cooldown-every repeats, "
              "outside the timed region (time_evaluator's cool-down); e.g. 1000 on a passively cooled Pi.")
@click.option("--cooldown-every", default=1, show_default=True, help="Repeats between cool-down pauses.")
@click.option("--pin-threads", default="", is_flag=False, flag_value="auto", help="Bind the runtime's threads one "
              "per core: alone = cores 0..threads-1, or a list (--pin-threads 2,3). Default: TVM's own placement.")
@click.option("--timing-rounds", default=3, show_default=True,
              help="Interleaved rounds of the timing phase (every variant of a target timed together after all are "
                   "attacked, order rotated per round; --repeat figures a round).")
@click.option("--quiet-host", is_flag=True, help="Time only on a quiet device: wait up to 2 minutes for other "
              "processes to use <= 25 %% of its CPUs, else stop before timing (finished attacks are kept). Without "
              "it, rows timed while the host was busy are flagged (busy_host) with the load figures.")
@click.option("--results-dir", default="results", show_default=True, type=click.Path())
@click.option("--run-id", default="", help="Run folder name (default: derived from the configuration, so a "
              "re-run resumes).")
@click.option("--rpc", default="", envvar="RPC", help="Direct RPC server host:port (overrides the target file).")
@click.option("--rpc-tracker", default="", envvar="RPC_TRACKER", help="RPC tracker host:port.")
@click.option("--rpc-key", default="", envvar="RPC_KEY", help="Device key at the tracker (e.g. rasp4).")
@click.option("--tune/--no-tune", default=True, show_default=True,
              help="Apply the MetaSchedule tuning database for each kernel set when one exists.")
@click.option("--trials", default=0, show_default=True,
              help="Tuning trials to spend first on kernels the database lacks (0: only reuse).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench(targets, dataset, data_dir, arch, model, weights, epochs, lr, plain, eps, seed, variants, plan_files,
          avg_bits, latency_budget, layer_times, attack,
          square_queries, square_on, square_on_device, attack_device, eval_samples, batch_large, repeat, number, warmup,
          cooldown_ms, cooldown_every, pin_threads, timing_rounds, quiet_host,
          results_dir, run_id, rpc, rpc_tracker, rpc_key, tune, trials, quiet) -> None:
    """Train/load, quantize, compile for each TARGET, run on its device, and measure every variant.

    Writes results/<run>/{run.json, metrics.csv, layers.csv, report.md}. Interrupted runs resume.
    """
    from harness.bench import BenchConfig, run_bench
    from harness.farm import outcome_summary, run_targets
    from harness.measure import LatencyProtocol
    from harness.report import summary_table
    from harness.targets import load_target

    tcfg, eps = train_config(dataset, arch, epochs, lr, plain, eps, seed, model_source(model, weights, arch))
    evaluation = _run(_eval_config, attack, square_queries, eps, seed)
    latency = _run(LatencyProtocol, warmup, number, repeat, cooldown_ms, cooldown_every, pin_threads,
                   rounds=timing_rounds)
    cfgs = []
    for target in dict.fromkeys(targets):  # unknown target: fail before training anything
        names = variants or ",".join(_run(load_target, target).variants)  # default: each target file's own
        cfgs.append(_run(BenchConfig, target=target, dataset=dataset, data_dir=data_dir, train=tcfg,
                         evaluation=evaluation, variants=tuple(v.strip() for v in names.split(",") if v.strip()),
                         plan_files=tuple(plan_files), laaq_avg_bits=avg_bits, latency_budget=latency_budget,
                         layer_times=layer_times, batch_large=batch_large, eval_samples=eval_samples,
                         latency=latency, seed=seed, results_dir=results_dir,
                         run_id=run_id if len(targets) == 1 else "", rpc=rpc, rpc_tracker=rpc_tracker,
                         rpc_key=rpc_key, tune=tune, trials=trials, model=model, weights=weights,
                         square_on="artefact" if square_on_device else square_on, attack_device=attack_device,
                         quiet_host=quiet_host))
    import pandas as pd

    if len(cfgs) == 1:
        res = _run(run_bench, cfgs[0], progress=not quiet)
        click.echo("\n" + summary_table(pd.DataFrame(res.rows)))
        click.echo(f"\nresults: {res.folder}")
        return
    outcomes = _run(run_targets, cfgs, progress=not quiet)
    click.echo("\n" + outcome_summary(outcomes))
    if any(o.error for o in outcomes):
        raise Fail(f"{sum(bool(o.error) for o in outcomes)} of {len(outcomes)} targets failed (see above)")


@main.command()
@click.argument("results_dir", type=click.Path(), default="results")
def report(results_dir) -> None:
    """Rebuild every run's report.md and the cross-run comparison under RESULTS_DIR."""
    from harness.report import write_comparison, write_run_report

    root = Path(results_dir)
    runs = sorted(p.parent for p in root.glob("*/metrics.csv"))
    if not runs:
        raise Fail(f"no runs under {root} (expected {root}/<run>/metrics.csv); run `make bench` first")
    for r in runs:
        _run(write_run_report, r)
    out = _run(write_comparison, root)
    click.echo(f"{len(runs)} run(s) -> {out}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("variant_a")
@click.argument("variant_b")
@click.option("--target", default=None, help="Target of the two rows (needed only when the run holds several).")
def compare(run_dir, variant_a, variant_b, target) -> None:
    """Are two variants of one run distinguishable? McNemar's exact test on their per-image outcomes.

    Uses RUN_DIR/per_image/*.csv, written by `bench` for every measured variant; prints the clean and
    robust accuracies, the discordant counts and the p-value.
    """
    from harness.report import compare_variants

    d = _run(compare_variants, Path(run_dir), variant_a, variant_b, target)
    for r in d.itertuples():
        click.echo(f"{r.on:6s} {variant_a} {r.acc_A:.4f} vs {variant_b} {r.acc_B:.4f} (n={r.n}): {r.verdict}")


@main.command()
@_train_options
@click.option("--method", default="laaq", show_default=True,
              type=click.Choice(["laaq", "uniform", "uniform-clip", "mse", "sensitivity", "hessian", "random",
                                 "random-best"]),
              help="LAAQ or a baseline; all are solved by the same exact knapsack under the same budget.")
@click.option("--avg-bits", type=float, default=None, help="Budget: parameter-weighted average weight bits.")
@click.option("--model-bytes", type=float, default=None, help="Budget: packed weight bytes.")
@click.option("--bops", type=float, default=None, help="Budget: bit operations (MACs x w-bits x a-bits).")
@click.option("--calib-samples", default=256, show_default=True, help="Calibration images (clean + PGD).")
@click.option("--refine/--no-refine", default=None,
              help="Layer-wise refinement on the exact adversarial loss (default: on for PGD-AT models only — "
                   "a plain model has no adversarial signal to refine on).")
@click.option("--group-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="0: one width and clip per layer; N: per group of N output channels (layers with >= 2N channels; "
                   "avg-bits and bops count each group at its width, the kernels run a layer at its widest group's).")
@click.option("--out", "out", type=click.Path(), required=True, help="Plan JSON to write.")
def search(dataset, data_dir, arch, model, weights, epochs, lr, plain, eps, seed, method, avg_bits, model_bytes, bops,
           calib_samples, refine, group_size, out) -> None:
    """Search a mixed-precision plan under a budget and write it as JSON (compile it with bench --plan)."""
    from harness.results import atomic_write_text
    from harness.variants import searched_plan
    from laaq.search import Budget, CalibrationRecipe

    m = load(dataset, data_dir, arch, epochs, lr, plain, eps, seed, model, weights)
    data, eps, model, graph = m.data, m.eps, m.model, m.graph
    if avg_bits is None and model_bytes is None and bops is None:
        avg_bits = 4.0
    budget = Budget(avg_bits=avg_bits, model_bytes=model_bytes, bops=bops)
    calib = _run(CalibrationRecipe(samples=calib_samples).make, graph, data.x_train, data.y_train, eps, seed, model)
    plan = _run(searched_plan, method, graph, calib, budget, seed, adversarial=not plain, refine=refine,
                group_size=group_size)
    atomic_write_text(Path(out), plan.to_json())
    layers = ", ".join(f"{k}:{v.describe()}" for k, v in plan.layers.items())
    click.echo(f"wrote {out}: {method} {layers}; spend {plan.meta.get('spend_avg_bits', '?')} avg bits; "
               f"search {plan.meta.get('search_time_s', '?')} s")


@main.command()
def targets() -> None:
    """List the targets (files in targets/): how each is reached and which int8 convolution scheme
    (instruction) it compiles to."""
    from harness.profile import resolve
    from harness.targets import available_targets

    for name in available_targets():
        try:
            p = resolve(name)
            scheme = p.scheme
            int8 = f"{scheme.name}/{scheme.instruction}" if scheme else ("gpu" if p.backend != "cpu" else "nchw")
            click.echo(f"{name:14s} {p.device.kind:9s} {int8:20s} {p.target.description}")
        except Exception as e:  # a broken file must not hide the others
            click.echo(f"{name:14s} BROKEN    {e}")


from harness.cli_bundle import bundle_command, ingest  # noqa: E402 - bundle reuses bench's options, defined above
from harness.cli_experiment import experiment  # noqa: E402

main.add_command(bundle_command(bench))
main.add_command(ingest)
main.add_command(experiment)


if __name__ == "__main__":
    sys.exit(main())
