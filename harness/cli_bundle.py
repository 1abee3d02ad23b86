"""``laaq-bench bundle`` and ``laaq-bench ingest``: measuring a target the harness cannot reach.

``bundle`` takes ``bench``'s own options (the same model, variants, evaluation and timing protocol,
copied from the ``bench`` command so that they cannot drift apart) minus those that need the device
(RPC addresses, per-layer tables) and minus the run folder (``ingest`` writes it).
"""

from __future__ import annotations

from pathlib import Path

import click

from harness.options import _eval_config, _run, train_config

# bench's options that make sense for a bundle (the device is not reachable while it is built)
BENCH_OPTIONS = ("dataset", "data_dir", "arch", "epochs", "lr", "plain", "eps", "seed", "variants",
                 "plan_files", "avg_bits", "attack", "square_queries", "attack_device", "eval_samples", "batch_large",
                 "repeat", "number", "warmup", "cooldown_ms", "cooldown_every", "tune", "trials", "quiet")


def _bundle(target, dataset, data_dir, arch, epochs, lr, plain, eps, seed, variants, plan_files, avg_bits, attack,
            square_queries, attack_device, eval_samples, batch_large, repeat, number, warmup, cooldown_ms,
            cooldown_every, tune, trials, quiet, out, tar) -> None:
    """Write an offline bundle for TARGET: the compiled libraries of every variant (built as `bench` builds
    them), the evaluation inputs and the adversarial examples crafted here, a runner that needs only TVM's
    runtime and numpy, a manifest (sha256 of every file) and a README with the one command to run on the
    device. Bring its output back with `laaq-bench ingest`.
    """
    from harness.bench import BenchConfig
    from harness.bundle.build import build_bundle
    from harness.measure import LatencyProtocol
    from harness.targets import load_target

    tgt = _run(load_target, target)
    variants = variants or ",".join(tgt.variants)
    tcfg, eps = train_config(dataset, arch, epochs, lr, plain, eps, seed)
    evaluation = _run(_eval_config, attack, square_queries, eps, seed)
    cfg = _run(BenchConfig, target=target, dataset=dataset, data_dir=data_dir, train=tcfg, evaluation=evaluation,
               variants=tuple(v.strip() for v in variants.split(",") if v.strip()), plan_files=tuple(plan_files),
               laaq_avg_bits=avg_bits, batch_large=batch_large, eval_samples=eval_samples,
               latency=LatencyProtocol(warmup, number, repeat, cooldown_ms, cooldown_every), seed=seed, tune=tune,
               trials=trials, attack_device=attack_device)
    s = _run(build_bundle, cfg, Path(out) if out else None, tar, progress=not quiet)
    click.echo(f"bundle {s.bundle_id} for {s.target} ({', '.join(s.variants)}): {s.path}, {s.bytes / 1e6:.1f} MB"
               + (f"; {s.tarball} {s.tarball_bytes / 1e6:.1f} MB" if s.tarball else "")
               + f"; built in {s.seconds:.0f} s")
    click.echo(f"on the device: cd {s.path.name} && TVM_USE_RUNTIME_LIB=1 python3 runner.py   (see its README.md)")
    click.echo(f"then here:     laaq-bench ingest {s.path}/output")


def bundle_command(bench: click.Command) -> click.Command:
    """The ``bundle`` command, with ``bench``'s options."""
    params = [click.Option(["--target"], default="x86", show_default=True,
                           help="Name of a file in targets/: the device the bundle is for (one per bundle).")]
    params += [p for p in bench.params if p.name in BENCH_OPTIONS]
    missing = set(BENCH_OPTIONS) - {p.name for p in bench.params}
    if missing:  # pragma: no cover - a renamed bench option must be renamed here too
        raise RuntimeError(f"bench lost options the bundle command reuses: {sorted(missing)}")
    params += [
        click.Option(["--out"], type=click.Path(), default=None,
                     help="Bundle folder to write (default: build/bundles/<run name>); must not exist."),
        click.Option(["--tar"], is_flag=True, help="Also write <out>.tar.gz to carry to the device."),
    ]
    return click.Command("bundle", callback=_bundle, params=params, help=_bundle.__doc__,
                         short_help="Write an offline bundle for a device the harness cannot reach.")


@click.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False))
@click.option("--bundle", "bundle_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The bundle OUTPUT came from (default: OUTPUT's parent folder).")
@click.option("--results-dir", default="results", show_default=True, type=click.Path())
@click.option("--run-id", default="", help="Run folder name (default: the bundle's run name, the one `bench` would "
              "use for the same configuration, so CUDA rows left `not run` there get measured).")
def ingest(output, bundle_dir, results_dir, run_id) -> None:
    """Check a device's bundle OUTPUT against its bundle and write the usual run-folder rows.

    Refuses (one line, nothing written) a truncated or modified output, a tampered or truncated bundle, and an
    output made from another bundle. Accuracy, robust accuracy and agreement are computed here from the device's
    outputs; latency and measured energy come from the device. Rows are `native`, or `emulated` when the runner
    ran under emulation.
    """
    from harness.bundle.ingest import ingest_output

    r = _run(ingest_output, Path(output), Path(bundle_dir) if bundle_dir else None, results_dir, run_id)
    click.echo(f"bundle {r.bundle_id}: {len(r.rows)} row(s) {r.measured_as} on {r.device}")
    click.echo(f"results: {r.folder}")
