"""Offline bundles end to end on a tiny model: bundle → runner (a plain Python with only TVM and numpy, or
inside the emulated Pi without RPC) → ingest → the same rows `bench` writes; every refusal; a CUDA bundle
built and checked on a CPU-only machine; the recorded evaluation replays exactly."""

from __future__ import annotations

import filecmp
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import tvm
from click.testing import CliRunner

from harness.backend.base import manifest_path
from harness.backend.cuda import nvcc_path
from harness.bundle.manifest import TargetEntry, VariantEntry, read_bundle, write_manifest
from harness.cli import main
from laaq.example_log import ExampleLog
from laaq.robustness import PRESETS, EvalConfig, evaluate, rejudge

TINY = ["--dataset", "digits", "--arch", "tinycnn", "--epochs", "6", "--lr", "0.01", "--eps", "0.1",
        "--eval-samples", "100", "--batch-large", "16", "--repeat", "3", "--number", "3", "--warmup", "1",
        "--attack", "quick", "--quiet"]
# what the device does not change: every figure but latency, throughput, where, when and how long — and
# `number`, the calls per repeat, which the timing phase lowers where a call is slow (harness.timing.
# calls_per_repeat: a loaded host gave "2/3" against an idle one's "3")
SAME = ["target", "measured_as", "kind", "plan", "avg_weight_bits", "act_bits", "batch_small", "batch_large",
        "clean_acc", "clean_ci_lo", "clean_ci_hi", "robust_acc", "robust_ci_lo", "robust_ci_hi", "attack_preset",
        "per_attack", "gradient_masking", "sanity", "eps_curve", "agreement", "bitexact", "max_abs_diff", "n_eval",
        "macs", "bops", "weight_bytes", "artefact_bytes", "energy_proxy_uj", "energy_measured_uj", "threads", "warmup",
        "repeat", "schedule"]
# the runner must not reach the harness, PyTorch or the attack code: importing any of them fails
BLOCKER = ("import runpy, sys\n"
           "for m in ('torch', 'harness', 'laaq', 'torchattacks', 'pandas', 'click'): sys.modules[m] = None\n"
           "sys.path.insert(0, sys.argv[1]); sys.argv = [sys.argv[1] + '/runner.py', *sys.argv[2:]]\n"
           "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def _cli(*args: str) -> str:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def _rows(results: Path) -> pd.DataFrame:
    (metrics,) = results.glob("*/metrics.csv")
    return pd.read_csv(metrics, dtype=str, keep_default_na=False).set_index("variant")


def run_runner(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """The bundle's runner under a plain Python: only TVM's runtime and numpy importable, no PYTHONPATH."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TVM_USE_RUNTIME_LIB": "1", "HOME": str(bundle)}
    return subprocess.run([sys.executable, "-I", "-c", BLOCKER, str(bundle), *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def x86(tmp_path_factory):
    """bench and bundle → runner → ingest of the same configuration on x86 (fp32: crafted on the artefact
    itself; int8: on the artefact too, judged bit-exact)."""
    root = tmp_path_factory.mktemp("bundle-x86")
    _cli("bench", "--target", "x86", "--variants", "fp32,int8", "--results-dir", str(root / "bench"), *TINY)
    t0 = time.perf_counter()
    out = _cli("bundle", "--target", "x86", "--variants", "fp32,int8", "--out", str(root / "b"), "--tar", *TINY)
    t1 = time.perf_counter()
    ran = run_runner(root / "b")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    t2 = time.perf_counter()
    ingest_out = _cli("ingest", str(root / "b" / "output"), "--results-dir", str(root / "ingested"))
    t3 = time.perf_counter()
    print(f"\nx86 round trip: bundle {t1 - t0:.1f} s, runner {t2 - t1:.1f} s, ingest {t3 - t2:.1f} s; {out}")
    return root, ingest_out


def test_x86_round_trip_rows_equal_bench(x86) -> None:
    root, text = x86
    bench, ingested = _rows(root / "bench"), _rows(root / "ingested")
    assert set(ingested.index) == {"fp32", "int8"}
    for v in ("fp32", "int8"):
        for c in SAME:
            assert bench.loc[v, c] == ingested.loc[v, c], (v, c, bench.loc[v, c], ingested.loc[v, c])
        assert "bundle runner" in ingested.loc[v, "device"] and float(ingested.loc[v, "lat_small_median_ms"]) > 0
    assert ingested.loc["int8", "bitexact"] == "1.0" and ingested.loc["int8", "measured_as"] == "native"
    for f in (root / "bench").glob("*/per_image/*.csv"):  # per-image outcomes, image by image
        (g,) = (root / "ingested").glob(f"*/per_image/{f.name}")
        assert filecmp.cmp(f, g, shallow=False), f.name
    (run_json,) = (root / "ingested").glob("*/run.json")
    ran = json.loads(run_json.read_text())["bundles"][-1]
    assert ran["emulated"] is False and ran["device"]["machine"] == platform.machine()
    assert (root / "b.tar.gz").stat().st_size > 0 and "results:" in text
    assert run_json.parent.name == next((root / "bench").iterdir()).name, "bench's run folder: rows land beside its own"


def test_device_outputs_bit_identical_to_bench_artefacts(x86) -> None:
    """The runner's outputs are those of the libraries `bench` measured, bit for bit, on every input."""
    from harness.devices.local import LocalSession

    root, _ = x86
    session = LocalSession(1, sensor=False)
    for tag in ("x86-fp32", "x86-int8"):
        x = np.load(root / "b" / "inputs" / f"{tag}.npz")["eval"]
        dev = np.load(root / "b" / "output" / "outputs" / f"{tag}.npz")["eval"]
        (lib,) = (root / "bench").glob(f"*/artefacts/{tag}-b16.so")
        from harness.measure import outputs

        ref = outputs(session.load(lib), x, 16)
        assert dev.dtype == ref.dtype and np.array_equal(dev, ref), tag


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(root / "b", dst)
    return dst


def _refused(tmp_path: Path, output: Path, bundle: Path, words: str) -> None:
    results = tmp_path / "results"
    r = CliRunner().invoke(main, ["ingest", str(output), "--bundle", str(bundle), "--results-dir", str(results)])
    assert r.exit_code == 1 and "BundleError" in r.output and words in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, "one clear line"
    assert not results.exists(), "nothing written"


def test_tampered_bundle_file_refused_by_ingest_and_runner(x86, tmp_path) -> None:
    b = _copy(x86[0], tmp_path)
    lib = b / "artefacts" / "x86-int8-b1.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    _refused(tmp_path, b / "output", b, "tampered with or corrupted: artefacts/x86-int8-b1.so")
    r = run_runner(b, "--check")
    assert r.returncode == 2 and "tampered" in r.stderr


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_bundle_refused(x86, tmp_path, damage: str) -> None:
    b = _copy(x86[0], tmp_path)
    f = b / "inputs" / "x86-int8.npz"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:100])
    else:
        f.unlink()
    _refused(tmp_path, b / "output", b, "truncated" if damage == "truncate" else "missing")


@pytest.mark.parametrize("damage", ["outputs", "result", "edited"])
def test_truncated_or_modified_output_refused(x86, tmp_path, damage: str) -> None:
    b = _copy(x86[0], tmp_path)
    out = b / "output"
    if damage == "outputs":
        f = out / "outputs" / "x86-int8.npz"
        f.write_bytes(f.read_bytes()[:-10])
        words = "truncated or altered: outputs/x86-int8.npz"
    elif damage == "result":
        f = out / "result.json"
        f.write_text(f.read_text()[:200])
        words = "truncated or not JSON"
    else:  # a faster device, by hand
        f = out / "result.json"
        d = json.loads(f.read_text())
        d["variants"]["x86-int8"]["timings_s"]["1"] = [1e-9] * 3
        f.write_text(json.dumps(d))
        words = "modified after the runner wrote it"
    _refused(tmp_path, out, b, words)


def test_output_from_another_bundle_refused(x86, tmp_path) -> None:
    """Same files but one, re-manifested: a different bundle, whose output this is not."""
    b = _copy(x86[0], tmp_path)
    m, _ = read_bundle(b)
    (b / "README.md").write_text((b / "README.md").read_text() + "\nanother bundle\n")
    write_manifest(b, TargetEntry(**m.target.__dict__), m.protocol, [VariantEntry(**v.__dict__) for v in m.variants])
    _refused(tmp_path, b / "output", b, f"was produced from bundle {m.bundle_id}")


def test_cuda_bundle_builds_and_checks_without_gpu(tmp_path) -> None:
    """The CUDA row's way to be measured: built here (nvcc fatbin for sm_90 inside each library, each verified),
    its manifest checked here, and the runner says plainly that this machine has no GPU to run it on."""
    b = tmp_path / "cuda"
    _cli("bundle", "--target", "cuda-sm90", "--variants", "int8", "--out", str(b), *TINY)
    m, _ = read_bundle(b)
    assert m.target.backend == "cuda" and [v.name for v in m.variants] == ["int8"]
    libs = m.variants[0].libs
    assert set(libs) == {"1", "16"}
    for lib in libs.values():
        info = json.loads(manifest_path(b / lib, "cuda").read_text())
        assert info["arch"] == "sm_90" and info["device_code"][0]["kernels_verified"] > 0
        if nvcc_path() is not None:  # the build machine has nvcc: machine code inside, nothing to compile there
            assert "SASS sm_90" in info["device_code"][0]["contains"]
        else:  # no nvcc here (it is not part of `make`'s set-up): the source travels, and the manifest says so
            assert "CUDA C++ source" in info["device_code"][0]["contains"]
            assert any("nvcc not found on the build machine" in n for n in info["notes"]), info["notes"]
        assert manifest_path(b / lib, "cuda").relative_to(b).as_posix() in m.files, "its manifest is pinned too"
    assert run_runner(b, "--check").returncode == 0
    if not tvm.cuda(0).exist:
        r = run_runner(b)
        assert r.returncode == 2 and "CUDA GPU" in r.stderr and not (b / "output" / "result.json").exists()


# ----------------------------------------------------------------------------- the replayed evaluation
@pytest.fixture(scope="module")
def recorded(tiny_model, digits):
    x, y = digits.x_test[:60], digits.y_test[:60]
    cfg = EvalConfig(replace(PRESETS["quick"], check_samples=20, curve_samples=20), 0.1)  # Square: not every image
    log = ExampleLog()
    rob = evaluate(tiny_model, x, y, cfg, transfer_source=tiny_model, examples=log)
    return x, y, cfg, log, rob


def test_replay_with_the_same_judge_is_the_evaluation(recorded, tiny_model) -> None:
    x, y, cfg, log, rob = recorded
    again = rejudge(ExampleLog.from_bytes(log.to_bytes()), x, y, cfg, tiny_model, transfer=True)
    assert np.array_equal(again.clean, rob.clean) and np.array_equal(again.robust, rob.robust)
    assert all(np.array_equal(again.cumulative[k], v) for k, v in rob.cumulative.items())
    assert again.curve == rob.curve and again.checks_str() == rob.checks_str()
    assert torch.equal(again.x_worst, rob.x_worst)
    assert {k.split("/")[0] for k in log.entries} >= {"main", "stronger", "transfer"}


def test_replay_with_a_disagreeing_judge_counts_unattacked(recorded, tiny_model) -> None:
    """A device that gets the first member's examples right where the host saw them broken: later members
    have nothing crafted for those images, which is counted (their robust outcome is an upper bound)."""
    x, y, cfg, log, rob = recorded
    idx, first = log.entries["main/pgd-20"]
    truth = {first[k].numpy().tobytes(): int(y[i]) for k, i in enumerate(idx)}

    def judge(t: torch.Tensor) -> torch.Tensor:  # the model, except: right on every pgd-20 example
        out = tiny_model(t).detach().clone()
        for i in range(len(t)):
            label = truth.get(t[i].numpy().tobytes())
            if label is not None:
                out[i] = -10.0
                out[i, label] = 10.0
        return out

    replay = ExampleLog.from_bytes(log.to_bytes())
    res = rejudge(replay, x, y, cfg, judge, transfer=True)
    broken_by_first = int((rob.clean & ~rob.cumulative["pgd-20"]).sum())
    assert broken_by_first > 0 and res.cumulative["pgd-20"].sum() == res.clean.sum()
    assert replay.unattacked.get("main/square", 0) > 0 and res.robust.sum() > rob.robust.sum()


# --------------------------------------------------------------------- inside the emulated Pi, no RPC
@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.skipif(platform.system() != "Linux" or os.geteuid() != 0 or os.environ.get("LAAQ_SKIP_EMULATED"),
                    reason="the emulated board needs Linux and root (qemu-user + chroot)")
def test_rpi4_round_trip_inside_emulated_pi_equals_rpc_path(tmp_path) -> None:
    from harness.devices.emulated_exec import run_on_board
    from harness.devices.emulated_rootfs import RASPBERRY_PI_4

    _cli("bench", "--target", "rpi4", "--variants", "int8", "--results-dir", str(tmp_path / "bench"), *TINY)
    t0 = time.perf_counter()
    _cli("bundle", "--target", "rpi4", "--variants", "int8", "--out", str(tmp_path / "b"), *TINY)
    (tmp_path / "out").mkdir()
    t1 = time.perf_counter()
    ran = run_on_board(RASPBERRY_PI_4, ["/opt/tvm-venv/bin/python", "/tmp/bundle/runner.py", "--out", "/tmp/out"],
                       {tmp_path / "b": "/tmp/bundle", tmp_path / "out": "/tmp/out"})
    assert ran.returncode == 0, ran.output
    t2 = time.perf_counter()
    _cli("ingest", str(tmp_path / "out"), "--bundle", str(tmp_path / "b"), "--results-dir", str(tmp_path / "ingested"))
    print(f"\nrpi4 round trip: bundle {t1 - t0:.1f} s, runner in the emulated Pi {t2 - t1:.1f} s, ingest "
          f"{time.perf_counter() - t2:.1f} s")
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["emulated"] and "x86 /proc/cpuinfo under an aarch64 interpreter" in result["emulation"]
    assert result["device"]["machine"] == "aarch64"
    rpc, ingested = _rows(tmp_path / "bench"), _rows(tmp_path / "ingested")
    assert rpc.loc["int8", "measured_as"] == ingested.loc["int8", "measured_as"] == "emulated"
    for c in SAME:
        assert rpc.loc["int8", c] == ingested.loc["int8", c], (c, rpc.loc["int8", c], ingested.loc["int8", c])
    (f,) = (tmp_path / "bench").glob("*/per_image/rpi4-int8.csv")
    (g,) = (tmp_path / "ingested").glob("*/per_image/rpi4-int8.csv")
    assert filecmp.cmp(f, g, shallow=False)
