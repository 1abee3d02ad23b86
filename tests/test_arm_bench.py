"""`bench --target arm` end to end on the emulated Raspberry Pi: cross-compiled artefacts over RPC,
bit-exact with the host reference, labelled emulated; and a board that dies mid-run."""

from __future__ import annotations

import os
import platform

import pandas as pd
import pytest
from click.testing import CliRunner

import harness.bench as bench_mod
from harness.bench import BenchConfig, run_bench
from harness.cli import main
from harness.devices.base import DeviceError
from harness.measure import LatencyProtocol
from laaq.attacks import PGDConfig
from laaq.robustness import PRESETS, EvalConfig
from laaq.train import TrainConfig

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(platform.system() != "Linux" or os.geteuid() != 0 or os.environ.get("LAAQ_SKIP_EMULATED"),
                       reason="the emulated board needs Linux and root (qemu-user + chroot)"),
]

TINY = ["--dataset", "digits", "--arch", "tinycnn", "--epochs", "6", "--lr", "0.01", "--eps", "0.1",
        "--eval-samples", "100", "--batch-large", "16", "--repeat", "3", "--number", "3", "--warmup", "1",
        "--attack", "quick", "--quiet"]


def test_bench_arm_on_emulated_pi(tmp_path) -> None:
    r = CliRunner().invoke(main, ["bench", "--target", "arm", "--variants", "fp32,int8",
                                  "--results-dir", str(tmp_path), *TINY])
    assert r.exit_code == 0, r.output
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    df = pd.read_csv(folder / "metrics.csv").set_index("variant")
    assert set(df.index) == {"fp32", "int8"}
    assert (df.measured_as == "emulated").all() and (df.target == "arm").all()
    assert df.loc["int8", "bitexact"] == 1.0 and df.loc["int8", "agreement"] == 1.0
    assert df.loc["int8", "robust_acc"] < df.loc["int8", "clean_acc"]
    assert "emulated" in (folder / "report.md").read_text()
    artefacts = list((folder / "artefacts").glob("*.so"))
    assert artefacts and all(open(a, "rb").read(20)[18] == 183 for a in artefacts), "aarch64 ELF expected"


def test_board_dying_mid_run_keeps_rows_and_resumes(tmp_path, monkeypatch) -> None:
    cfg = BenchConfig(target="arm", dataset="digits",
                      train=TrainConfig(arch="tinycnn", epochs=6, lr=0.01, pgd=PGDConfig(eps=0.1, step_size=0.03,
                                                                                         steps=3)),
                      evaluation=EvalConfig(PRESETS["quick"], 0.1), variants=("int8", "int4"),
                      batch_large=16, eval_samples=50, latency=LatencyProtocol(1, 2, 2), results_dir=str(tmp_path))
    real = bench_mod.measure_variant
    calls = []

    def measure_then_kill(cfg_, target, session, *a, **k):
        if calls:  # the board dies before the second variant
            session.server.kill()
        calls.append(1)
        return real(cfg_, target, session, *a, **k)

    monkeypatch.setattr(bench_mod, "measure_variant", measure_then_kill)
    with pytest.raises(DeviceError):
        run_bench(cfg, progress=False, log=lambda *_: None)
    rows = pd.read_csv(cfg.folder() / "metrics.csv")
    assert list(rows.variant) == ["int8"], "the finished row is kept, nothing half-written"
    monkeypatch.setattr(bench_mod, "measure_variant", real)
    logs: list[str] = []
    res = run_bench(cfg, progress=False, log=logs.append)
    assert res.skipped == ["int8"] and any("already measured int8" in m for m in logs)
    assert sorted(pd.read_csv(cfg.folder() / "metrics.csv").variant) == ["int4", "int8"]
