"""The CLI end to end on a tiny model: real training, real TVM compile and run, result files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.bench import COLUMNS
from harness.cli import main
from harness.profile import profiles_built
from laaq.robustness import PRESETS, EvalConfig

TINY = ["--dataset", "digits", "--arch", "tinycnn", "--epochs", "6", "--lr", "0.01", "--eps", "0.1",
        "--eval-samples", "200",
        "--batch-large", "16", "--repeat", "3", "--number", "3", "--warmup", "1", "--attack", "quick", "--quiet"]
# the measurement protocol's options (a bare --pin-threads followed by another option means "auto")
PROTOCOL = ["--cooldown-ms", "1", "--cooldown-every", "2", "--pin-threads"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    before = profiles_built()
    r = CliRunner().invoke(main, ["bench", "--target", "x86", "--variants", "fp32,int8", "--results-dir", str(out),
                                  *PROTOCOL, *TINY])
    assert r.exit_code == 0, r.output
    PROFILES_PER_RUN.append(profiles_built() - before)
    return out, r.output


PROFILES_PER_RUN: list[int] = []


def test_target_resolved_once_per_run(bench_run) -> None:
    """The target file is interpreted once per run (harness.profile.resolve), then passed down:
    two variants, two batch sizes each, tuning lookups, the device — one TargetProfile."""
    assert PROFILES_PER_RUN == [1]


def test_compile_builds_what_bench_measured(bench_run, tmp_path) -> None:
    """`laaq-bench compile --plan P` (and without a plan: fp32) gives a library whose outputs are
    bit-identical to the artefact `bench` measured for the same target and plan."""
    import numpy as np

    from harness.devices.local import LocalSession
    from laaq.data import load_digits
    from laaq.quant.quantizers import quantize_input

    out, _ = bench_run
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    train = [a for a in TINY[:TINY.index("--eval-samples")]]  # dataset, arch, epochs, lr, eps: the same model
    x = load_digits(seed=0).x_test[:32]
    session = LocalSession(1, sensor=False)
    for variant, extra, feed in (("int8", ["--plan", str(folder / "plans" / "int8.json")],
                                  lambda t: quantize_input(t).numpy()),
                                 ("fp32", [], lambda t: t.numpy().astype(np.float32))):
        lib = tmp_path / f"{variant}.so"
        r = CliRunner().invoke(main, ["compile", "--target", "x86", *train, *extra, "--batch", "1", "--out", str(lib)])
        assert r.exit_code == 0, r.output
        ours = session.load(lib)
        benched = session.load(folder / "artefacts" / f"x86-{variant}-b1.so")
        for i in range(len(x)):
            a, b = ours.run(feed(x[i:i + 1])), benched.run(feed(x[i:i + 1]))
            assert a.dtype == b.dtype and np.array_equal(a, b), (variant, i)


def test_bench_writes_every_result_file(bench_run) -> None:
    out, text = bench_run
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    for name in ("run.json", "metrics.csv", "layers.csv", "report.md"):
        assert (folder / name).exists(), name
    assert f"results: {folder}" in text
    df = pd.read_csv(folder / "metrics.csv")
    assert list(df.columns) == COLUMNS
    assert set(df.variant) == {"fp32", "int8"}
    int8 = df.set_index("variant").loc["int8"]
    assert int8.bitexact == 1.0 and int8.agreement == 1.0, "the artefact must equal the integer reference"
    assert int8.clean_acc > 0.5
    assert int8.robust_acc < int8.clean_acc
    assert int8.robust_ci_lo <= int8.robust_acc <= int8.robust_ci_hi and int8.clean_ci_lo <= int8.clean_acc
    assert int8.measured_as == "native" and int8.attack_preset == "quick"
    # the ensemble's read-out, the sanity checks (Square ran black-box on the artefact itself) and the eps-curve
    assert int8.per_attack.startswith("pgd-20 ") and "square" in int8.per_attack
    assert int8.gradient_masking in ("no", "suspected") and "eps-curve" in int8.sanity and "transfer" in int8.sanity
    assert len(int8.eps_curve.split()) >= 5
    info = json.loads((folder / "run.json").read_text())
    assert EvalConfig.from_dict(info["config"]["evaluation"]) == EvalConfig(PRESETS["quick"], 0.1)  # round trip
    assert info["attack_preset"] == "quick" and "PGD-CE 20 steps" in info["attack"]
    # where the time went: every stage of every variant, and the run's own (issue 23)
    stages = info["stages"]
    assert {"run", "x86/fp32", "x86/int8", "x86/(timing phase)"} <= set(stages)
    assert "timing" in stages["x86/(timing phase)"]
    assert {"data", "calibration", "report"} <= set(stages["run"])
    assert {"training", "checkpoint (cached)"} & set(stages["run"])
    peaks = info["stages_peak_mib"]  # each stage's peak resident memory (MiB), the attacks' as one figure
    assert {"data", "report"} <= set(peaks["run"]) and {"attacks", "compile b1", "load"} <= set(peaks["x86/int8"])
    assert all(0 < v < 64 * 1024 for scope in peaks.values() for v in scope.values()), peaks
    for scope in ("x86/fp32", "x86/int8"):
        assert {"lowering b1", "compile b1", "compile b16", "load", "clean", "pgd-20", "square", "checks",
                "eps_curve", "agreement"} <= set(stages[scope]), scope
        assert all(v >= 0 for v in stages[scope].values())
    assert "quantize" in stages["x86/int8"]
    assert "where the time went" in text and "total this run:" in text
    # who answered Square's queries is said in the row (stand-in with its sampled check, or the artefact)
    assert int8.square_on.startswith(("Square queried the bit-exact twin", "artefact"))
    per_img = pd.read_csv(folder / "per_image" / "x86-int8.csv")
    assert len(per_img) == 200 and abs(per_img.robust.mean() - int8.robust_acc) < 1e-4
    assert (per_img.robust <= per_img.clean).all()
    for col in ("lat_small_median_ms", "lat_small_p90_ms", "lat_large_median_ms", "thr_large_ips"):
        assert (df[col] > 0).all(), col
    # one timing phase for both variants (issue 28): its rounds, their spread and the host's load, per row
    assert (df.timing_rounds == 3).all() and (df.lat_small_spread_pct >= 0).all()
    assert ((df.other_cpu_frac >= 0) & (df.other_cpu_frac <= 1)).all() and (df.host_load >= 0).all()
    assert "interleaved rounds" in info["latency_protocol"]
    fp32 = df.set_index("variant").loc["fp32"]
    assert fp32.agreement >= 0.99 and float(fp32.max_abs_diff) < 1e-3
    # a fresh cache has no tuning database: both rows name their fixed hand schedule (fp32: NCHWc, issue 23)
    assert fp32.schedule == "untuned+hand" and int8.schedule == "untuned+hand"
    _protocol_recorded(df, info)
    layers = pd.read_csv(folder / "layers.csv")
    assert set(layers.layer) == {"conv1", "conv2", "fc1", "fc2"} and (layers.macs > 0).all()
    assert "How this was measured" in (folder / "report.md").read_text()


def _protocol_recorded(df: pd.DataFrame, info: dict) -> None:
    """Cool-down, pinning, p99, the runtime's real thread count, and this machine's conditions: filled where
    it exposes them, empty (never zero) where it does not."""
    from harness.devices.system import LocalSystem, read_state

    for tag in ("small", "large"):
        assert (df[f"lat_{tag}_p99_ms"] >= df[f"lat_{tag}_p90_ms"]).all()
        assert (df[f"lat_{tag}_p90_ms"] >= df[f"lat_{tag}_median_ms"]).all()
    assert (df.cooldown_ms == 1).all() and (df.pinned_cpus == "0,1").all()
    assert (df.threads == 2).all(), "the runtime ran the target's two threads (TVM alone would take half the CPUs)"
    here = read_state(LocalSystem())
    for col, value in (("governor", here.governor), ("freq_mhz_before", here.freq_mhz), ("temp_c_after", here.temp_c),
                       ("throttled_after", here.throttled)):
        assert df[col].isna().all() == (value is None), col  # an empty cell where the machine says nothing
    if "clear_refs" in info["device_state"]["memory"]:
        assert (df.rss_peak_mb > 0).all() and (df.rss_delta_mb >= 0).all() and (df.rss_peak_mb > df.rss_delta_mb).all()
    assert "1 ms cool-down after every 2 repeat(s)" in info["latency_protocol"]
    assert "pinned one per core (auto)" in info["latency_protocol"]
    assert {"at_open", "at_end", "exposed", "memory"} <= set(info["device_state"])


def test_rerun_resumes_without_remeasuring(bench_run) -> None:
    out, _ = bench_run
    r = CliRunner().invoke(main, ["bench", "--target", "x86", "--variants", "fp32,int8", "--results-dir", str(out),
                                  *PROTOCOL, *TINY])
    assert r.exit_code == 0, r.output
    assert "already measured fp32, int8" in r.output
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    assert len(pd.read_csv(folder / "metrics.csv")) == 2
    info = json.loads((folder / "run.json").read_text())  # the measured variants keep their stage figures
    assert "attacks" in info["stages_peak_mib"]["x86/int8"] and "pgd-20" in info["stages"]["x86/int8"]


def test_report_builds_comparison(bench_run) -> None:
    out, _ = bench_run
    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 0, r.output
    text = (out / "comparison.md").read_text()
    assert "| x86 | native |" in text and "int8" in text


def test_unknown_target_is_a_clear_error() -> None:
    r = CliRunner().invoke(main, ["bench", "--target", "pi9"])
    assert r.exit_code != 0
    assert "unknown target 'pi9'" in r.output and "x86" in r.output


def test_missing_data_dir_says_what_it_expected(tmp_path) -> None:
    r = CliRunner().invoke(main, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none")])
    assert r.exit_code != 0 and "data_batch_1" in r.output


def test_help_explains() -> None:
    r = CliRunner().invoke(main, ["bench", "--help"])
    assert r.exit_code == 0 and "resume" in r.output.lower()


def test_targets_lists_int8_scheme_per_target() -> None:
    out = CliRunner().invoke(main, ["targets"])
    assert out.exit_code == 0, out.output
    lines = {ln.split()[0]: ln for ln in out.output.splitlines() if ln.strip()}
    assert "nchwc_avx2/vpmaddwd" in lines["x86-avx2"] and "nchwc_sdot/sdot" in lines["rpi5"]
    host = "nchwc_vnni/vpdpbusd" if "avx512_vnni" in Path("/proc/cpuinfo").read_text() else "nchwc_avx2/vpmaddwd"
    assert host in lines["x86"], "the host-native x86 target lists the scheme this CPU gets"
    assert "nchwc_neon/smull" in lines["rpi4"] and " gpu " in lines["cuda"]


def test_compare_two_variants_of_a_run(bench_run) -> None:
    out, _ = bench_run
    (folder,) = [p.parent for p in out.glob("*/metrics.csv")]
    r = CliRunner().invoke(main, ["compare", str(folder), "fp32", "int8"])
    assert r.exit_code == 0, r.output
    assert "robust fp32" in r.output and "clean  fp32" in r.output and "(n=200)" in r.output
    assert ("not distinguishable" in r.output) or ("more accurate" in r.output)
    r = CliRunner().invoke(main, ["compare", str(folder), "fp32", "int3"])
    assert r.exit_code == 1 and "no per-image outcomes for int3" in r.output
    assert "Variants compared on the same images" in (folder / "report.md").read_text()


def test_retime_script_times_a_runs_artefacts(bench_run) -> None:
    """benchmarks/retime.py loads a finished run's artefacts and times them interleaved (bench's protocol)."""
    import subprocess
    import sys
    from pathlib import Path

    out, _ = bench_run
    run = next(p.parent for p in out.glob("*/run.json"))
    r = subprocess.run([sys.executable, "benchmarks/retime.py", str(run), "--rounds", "1", "--repeat", "2",
                        "--number", "1", "--warmup", "1"], capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(run / "retimed.csv")
    assert set(df.variant) == {"fp32", "int8"} and len(set(df.batch)) == 2 and (df.median_ms > 0).all()
    assert (df[df.variant == "int8"].vs_int8 == 1.0).all()


def test_square_stand_in_script_pairs_two_runs(bench_run, tmp_path) -> None:
    """benchmarks/square_stand_in.py pairs two runs' per-image outcomes: a run against itself is 'identical';
    one flipped image is counted and tested, not hidden."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    out, _ = bench_run
    run = next(p.parent for p in out.glob("*/run.json"))
    other = tmp_path / "literal"
    shutil.copytree(run, other)
    per = other / "per_image" / "x86-int8.csv"
    df = pd.read_csv(per)
    i = int(df.index[df.robust == 1][0])
    df.loc[i, ["square", "robust"]] = 0  # the 'literal' run broke one more image
    df.to_csv(per, index=False)
    r = subprocess.run([sys.executable, "benchmarks/square_stand_in.py", str(run), str(other)], capture_output=True,
                       text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    got = pd.read_csv(run / "square_stand_in.csv").set_index(["variant", "outcome"])
    assert (got.loc["fp32"].verdict == "identical").all()
    assert got.loc[("int8", "robust"), "only_stand_in_robust"] == 1
    assert got.loc[("int8", "robust"), "verdict"] == "not distinguishable"
