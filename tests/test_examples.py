"""The examples a person copies: the MobileNetV2-style and ResNet-18-style files through ``bench`` — bit-exact
artefacts on x86 (fast: int8 on 8×8 digits with few samples; slow: with a LAAQ plan, and ResNet-18) and on
the emulated Pi (slow)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.bench import BenchConfig, run_bench
from harness.measure import LatencyProtocol
from laaq.attacks import PGDConfig
from laaq.graph import run_float
from laaq.importer import import_model
from laaq.robustness import PRESETS, EvalConfig
from laaq.search import CalibrationRecipe
from laaq.train import TrainConfig
from laaq.usermodel import ModelSource

ROOT = Path(__file__).resolve().parent.parent
MOBILENET = f"{ROOT}/examples/mobilenetv2.py:mobilenetv2"
RESNET18 = f"{ROOT}/examples/resnet18.py:resnet18"


@pytest.mark.parametrize("spec", [MOBILENET, RESNET18], ids=["mobilenetv2", "resnet18"])
def test_examples_import_exactly(spec: str) -> None:
    """The examples at MNIST size: the imported float graph reproduces the model (BN statistics perturbed)."""
    from laaq.models import randomize_bn_stats

    torch.manual_seed(0)
    model = randomize_bn_stats(ModelSource.parse(spec).build((1, 28, 28), 10)).eval()
    t0 = time.perf_counter()
    graph = import_model(model, (1, 28, 28), 10)
    print(f"{spec}: imported in {time.perf_counter() - t0:.2f} s, {len(graph.weighted())} weighted layers")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(run_float(graph, x).numpy(), model(x).numpy(), atol=1e-5, rtol=0)
    ops = [n.op for n in graph.nodes]
    if spec == MOBILENET:
        assert any(n.groups > 1 for n in graph.nodes) and any(n.act_max == 6.0 for n in graph.nodes)
        assert any(n.residual and not n.relu for n in graph.nodes), "linear-bottleneck residual adds, no ReLU"
    else:
        assert "maxpool" in ops and sum(bool(n.residual) for n in graph.nodes) == 8


def _config(spec: str, target: str, tmp_path: Path, variants=("laaq",)) -> BenchConfig:
    source = ModelSource.parse(spec)
    return BenchConfig(
        target=target, dataset="digits", model=spec,
        train=TrainConfig(arch=source.arch, epochs=2, lr=0.01, pgd=PGDConfig(eps=0.1, step_size=0.03, steps=3),
                          model_digest=source.digest()),
        evaluation=EvalConfig(PRESETS["quick"].with_square_queries(50), 0.1), variants=variants,
        calibration=CalibrationRecipe(samples=32, attack_steps=3), batch_large=4, eval_samples=16,
        latency=LatencyProtocol(1, 1, 2), results_dir=str(tmp_path))


def _check_rows(folder: Path, target: str, measured_as: str, variants) -> pd.DataFrame:
    df = pd.read_csv(folder / "metrics.csv").set_index("variant")
    assert set(df.index) == set(variants)
    assert (df.target == target).all() and (df.measured_as == measured_as).all()
    assert (df.bitexact == 1.0).all() and (df.agreement == 1.0).all(), "the artefact must equal the integer reference"
    layers = pd.read_csv(folder / "layers.csv")
    assert (layers.macs > 0).all() and len(set(layers.layer)) > 20
    if "laaq" in variants:
        assert layers[layers.variant == "laaq"].weight_bits.min() < 8, "LAAQ at 4 average bits narrows some layers"
    return df


def test_mobilenetv2_example_bench_x86(tmp_path) -> None:
    """The whole pipeline on the example file (fast: int8): train, import, the host scheme's blocked artefact with
    depthwise convs in plain loops, attacks on the bit-exact twin judged on the artefact, rows and report."""
    res = run_bench(_config(MOBILENET, "x86", tmp_path, ("int8",)), progress=False, log=lambda m: None)
    df = _check_rows(res.folder, "x86", "native", ["int8"])
    assert df.loc["int8", "schedule"].endswith("+hand")
    assert (res.folder / "report.md").exists() and (res.folder / "plans" / "int8.json").exists()


@pytest.mark.slow
def test_mobilenetv2_example_laaq_x86(tmp_path) -> None:
    """The same with a LAAQ plan (the search's tail gains and refinement on 29 layers cost minutes on 2 cores)."""
    res = run_bench(_config(MOBILENET, "x86", tmp_path), progress=False, log=lambda m: None)
    _check_rows(res.folder, "x86", "native", ["laaq"])


@pytest.mark.slow
def test_resnet18_example_bench_x86(tmp_path) -> None:
    res = run_bench(_config(RESNET18, "x86", tmp_path, ("int8", "laaq")), progress=False, log=lambda m: None)
    _check_rows(res.folder, "x86", "native", ["int8", "laaq"])


@pytest.mark.slow
@pytest.mark.emulated
@pytest.mark.skipif(platform.system() != "Linux" or os.geteuid() != 0 or os.environ.get("LAAQ_SKIP_EMULATED"),
                    reason="the emulated board needs Linux and root (qemu-user + chroot)")
def test_mobilenetv2_example_bench_emulated_pi(tmp_path) -> None:
    res = run_bench(_config(MOBILENET, "rpi4", tmp_path, ("int8", "laaq")), progress=False, log=lambda m: None)
    _check_rows(res.folder, "rpi4", "emulated", ["int8", "laaq"])
