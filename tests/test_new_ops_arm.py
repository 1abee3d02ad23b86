"""The edge-CNN ops on the Arm schemes, cross-compiled through ``bench``'s own path and run on the emulated
board of each target (QEMU enforcing its CPU): Pi 4 (NEON ``smull``, int16 ``smlal`` chains for ≤ 7-bit
layers) and Pi 5 (``sdot``); depthwise / grouped convs, pools, adds and concatenations in the blocked layout
with activations stored as ``u8 − 128``, bit-exact with the integer reference."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from op_models import SUPPORTED_MODELS, build
from test_emulated_device import _emulator_skip_reason
from test_new_ops import SHAPE, mixed_qgraph

from harness.compile import compile_module
from harness.devices import open_device
from harness.lower import lower_integer_for
from harness.profile import resolve
from harness.targets import load_target
from laaq.quant.integer import run_integer
from laaq.quant.quantizers import quantize_input

TARGETS = ["rpi4", "rpi5"]


@pytest.fixture(scope="module")
def arm_cases(tmp_path_factory) -> dict[str, tuple]:
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64 cross toolchain missing (make emu-device installs it)")
    out: Path = tmp_path_factory.mktemp("arm-ops")
    x = quantize_input(torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(5))).numpy()
    cases = {}
    for name in SUPPORTED_MODELS:
        qg = mixed_qgraph(build(name))
        libs = {t: compile_module(lower_integer_for(qg, len(x), resolve(t)), resolve(t), out / f"{name}-{t}.so",
                                  "mixed", len(x)).path for t in TARGETS}
        cases[name] = (run_integer(qg, x), libs)
    return {"x": x, **cases}


@pytest.mark.emulated
@pytest.mark.parametrize("target", TARGETS)
def test_new_ops_bit_exact_on_emulated_board(arm_cases, target: str) -> None:
    reason = _emulator_skip_reason()
    if reason:
        pytest.skip(reason)
    x = arm_cases["x"]
    with open_device(load_target(target), progress=False) as dev:
        for name in SUPPORTED_MODELS:
            ref, libs = arm_cases[name]
            out = dev.load(libs[target]).run(x)
            assert out.dtype == np.int32 and np.array_equal(out, ref), (name, target)
