"""Resumable, repeatable runs: a SIGKILLed benchmark resumes, and the same inputs give the same figures.

Resuming is only sound because a re-run is deterministic: rows kept from before a kill must be the
rows a fresh run would produce, so the same seed and inputs must give the same model, the same plan
and the same accuracy figures (timings aside). Both halves are tested here.


SIGKILL is the hard case (OOM killer, a lost SSH session with ``kill -9``, a CI timeout): no handler
runs, so only what is already on disk counts. The run is a real ``laaq-bench bench`` subprocess on a
tiny model; it is killed as soon as its first row has landed in ``metrics.csv`` — i.e. while the next
variant is being compiled or measured — and then simply started again with the same command.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.bench import COLUMNS, LAYER_COLUMNS, BenchConfig, measure_variant, variants_for
from harness.devices import open_device
from harness.measure import LatencyProtocol
from harness.profile import resolve
from laaq.attacks import PGDConfig
from laaq.robustness import PRESETS, EvalConfig
from laaq.search import CalibrationRecipe
from laaq.train import TrainConfig, train_or_load

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ["fp32", "int8", "int4"]
BENCH = ["--target", "x86", "--dataset", "digits", "--arch", "tinycnn", "--epochs", "1", "--plain", "--lr", "0.01",
         "--eps", "0.1", "--eval-samples", "40", "--batch-large", "8", "--repeat", "1", "--number", "1",
         "--warmup", "0", "--attack", "quick", "--quiet", "--variants", ",".join(VARIANTS), "--run-id", "killed"]
# the columns the timing phase fills (issue 28): a row killed before it is left with them empty
TIMING_COLUMNS = {c for c in COLUMNS if c.startswith(("lat_", "thr_")) or c in (
    "energy_measured_uj", "governor", "freq_mhz_before", "freq_mhz_after", "temp_c_before", "temp_c_after",
    "throttled_before", "throttled_after", "timing_rounds", "host_load", "other_cpu_frac", "busy_host")}
# A guard against a hung child only (never an assertion on speed): a tiny bench takes well under a minute.
GUARD_S = 600


def _bench_cmd(results: Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "bench", *BENCH, "--results-dir", str(results)]


def _rows(metrics: Path) -> list[dict[str, str]]:
    """Rows of metrics.csv as a reader sees it at any instant (the file is replaced atomically)."""
    try:
        with metrics.open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def test_sigkill_then_rerun_finishes_without_redoing_rows(tmp_path: Path) -> None:
    results = tmp_path / "results"
    folder = results / "killed"
    metrics = folder / "metrics.csv"
    log = tmp_path / "first.log"
    with log.open("w") as out:
        # own session: the kill reaches the compiler children too, as a real `kill -9` of a job would
        proc = subprocess.Popen(_bench_cmd(results), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + GUARD_S
        while not _rows(metrics):
            assert proc.poll() is None, f"bench exited ({proc.returncode}) before its first row:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no row after {GUARD_S} s:\n{log.read_text()}"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run finished before it could be killed:\n{log.read_text()}"

    before = _rows(metrics)
    done = [r["variant"] for r in before]
    assert done and done == VARIANTS[: len(done)] and len(done) < len(VARIANTS), done
    assert list(before[0]) == COLUMNS

    rerun = subprocess.run(_bench_cmd(results), cwd=REPO, capture_output=True, text=True, timeout=GUARD_S)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"already measured {', '.join(done)}" in rerun.stdout
    for v in done:
        assert f"[x86] {v}: compile" not in rerun.stdout, f"{v} was measured again"
    for v in VARIANTS[len(done):]:
        assert f"[x86] {v}: compile" in rerun.stdout

    after = pd.read_csv(metrics, dtype=str, keep_default_na=False)
    assert list(after.columns) == COLUMNS
    assert sorted(after["variant"]) == sorted(VARIANTS) and not after.duplicated(["target", "variant"]).any()
    kept = after.set_index("variant")
    for row in before:  # untouched but for the timing phase: same timestamp and accuracy figures as before the kill
        now = kept.loc[row["variant"]].to_dict()
        assert {k: v for k, v in now.items() if k not in TIMING_COLUMNS} == \
            {k: v for k, v in row.items() if k != "variant" and k not in TIMING_COLUMNS}
        assert now["lat_small_median_ms"] != "" and now["timing_rounds"] == "3"  # timed by the re-run's phase
    layers = pd.read_csv(folder / "layers.csv", dtype=str, keep_default_na=False)
    assert list(layers.columns) == LAYER_COLUMNS
    assert not layers.duplicated(["target", "variant", "layer"]).any()
    per_variant = layers.groupby("variant").size()
    assert set(per_variant.index) == set(VARIANTS) and per_variant.nunique() == 1, per_variant
    info = json.loads((folder / "run.json").read_text())
    assert "finished" in info and info["config"]["variants"] == VARIANTS
    for plan in (folder / "plans").glob("*.json"):
        json.loads(plan.read_text())
    assert "Variants" in (folder / "report.md").read_text()
    assert (folder / "report.html").read_text().rstrip().endswith("</html>")


# --- determinism -------------------------------------------------------------------------------------------

# Figures that depend only on seed and inputs (latency, compile time and timestamp are measurements).
ACCURACY = ["clean_acc", "robust_acc", "agreement", "bitexact", "max_abs_diff", "n_eval", "attack", "avg_weight_bits",
            "macs", "bops", "weight_bytes", "energy_proxy_uj", "plan"]


def test_same_seed_same_weights(digits, tmp_path: Path) -> None:
    """Two trainings from scratch (separate caches) with one seed give bit-identical weights."""
    cfg = TrainConfig(arch="tinycnn", epochs=1, adversarial=True, lr=5e-3,
                      pgd=PGDConfig(eps=0.1, step_size=0.1, steps=1), seed=3)
    a, _, cached_a = train_or_load(digits, cfg, cache_dir=tmp_path / "a", progress=False)
    b, _, cached_b = train_or_load(digits, cfg, cache_dir=tmp_path / "b", progress=False)
    assert not cached_a and not cached_b
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_same_seed_same_plan_and_accuracy(digits, tiny_model, tmp_path: Path) -> None:
    """The int8 path twice through the library: identical plan, integer graph, layers and accuracy figures."""
    cfg = BenchConfig(target="x86", dataset="digits", variants=("int8",), batch_large=16, eval_samples=120,
                      calibration=CalibrationRecipe(samples=128), evaluation=EvalConfig(PRESETS["quick"], 0.1, seed=7),
                      latency=LatencyProtocol(warmup=0, number=1, repeat=1))
    target = resolve("x86")
    runs = []
    with open_device(target, progress=False) as session:
        for i in range(2):
            (v,) = variants_for(cfg, tiny_model, digits)
            m = measure_variant(cfg, target, session, v, tiny_model, digits, tmp_path / str(i), False)
            runs.append((v, m.row, m.layers))
    (v1, row1, layers1), (v2, row2, layers2) = runs
    assert v1.plan.to_json() == v2.plan.to_json()
    for name, q1 in v1.qg.qnodes.items():
        q2 = v2.qg.qnodes[name]
        for attr in ("w_q", "w_scale", "b_q", "mult"):
            a, b = getattr(q1, attr), getattr(q2, attr)
            assert (a is None and b is None) or np.array_equal(a, b), f"{name}.{attr}"
        assert (q1.s_in, q1.s_out, q1.shift) == (q2.s_in, q2.s_out, q2.shift), name
    assert layers1 == layers2
    assert {k: row1[k] for k in ACCURACY} == {k: row2[k] for k in ACCURACY}
    assert row1["bitexact"] == 1.0 and 0.0 < row1["robust_acc"] <= row1["clean_acc"]
