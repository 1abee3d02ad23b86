"""The Arm int8 schemes: ``sdot`` (Pi 5, Armv8.2 dot product) and ``smull``/``saddlp`` (Pi 4, NEON).

Cross-compiled through the same path as ``bench`` (``harness.compile.compile_module``), the
instruction found in the aarch64 disassembly, and the library run on the emulated board of each
target (QEMU enforces the board's CPU: the Pi 4's A72 has no ``sdot``), bit-exact with the
reference. Activations are stored as ``u8 − 128`` for the signed multiply; these tests are where
that offset meets real Arm code.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_emulated_device import _emulator_skip_reason

from harness.backend.schemes import NEON, SDOT
from harness.compile import compile_module
from harness.devices import open_device
from harness.lower import lower_integer_for
from harness.profile import resolve
from harness.targets import load_target
from laaq.models import ResNet20, randomize_bn_stats
from laaq.quant.integer import run_integer
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input

OBJDUMP = "aarch64-linux-gnu-objdump"
# "-packed": the same board with pack_weights = true (≤ 4-bit kernels packed, unpacked in the conv)
CASES = [("rpi5", SDOT, r"\bsdot\b"), ("rpi4", NEON, r"\bsmull\b"), ("rpi5-packed", SDOT, r"\bsdot\b")]


def _target(name: str):
    board = load_target(name.removesuffix("-packed"))
    return dataclasses.replace(board, pack_weights=True) if name.endswith("-packed") else board


@pytest.fixture(scope="module")
def resnet_qg():
    torch.manual_seed(3)
    model = ResNet20(image=16).eval()
    randomize_bn_stats(model)
    graph = model.to_graph()
    bits = [8, 4, 6, 3, 5, 2]
    plan = QuantPlan({n.name: LayerSetting(bits[i % 6], 1.0) for i, n in enumerate(graph.weighted())})
    return quantize_graph(graph, plan, torch.rand(32, 3, 16, 16))


@pytest.fixture(scope="module")
def arm_libraries(resnet_qg, tmp_path_factory) -> dict[str, Path]:
    if shutil.which("aarch64-linux-gnu-g++") is None or shutil.which(OBJDUMP) is None:
        pytest.skip("aarch64 cross toolchain missing (make emu-device installs it)")
    out = tmp_path_factory.mktemp("arm-int8")
    libs = {}
    for name, scheme, _ in CASES:
        target = resolve(_target(name))
        assert target.scheme is scheme and target.pack_weights == name.endswith("-packed")
        mod = lower_integer_for(resnet_qg, 2, target)
        libs[name] = compile_module(mod, target, out / f"resnet20-{name}.so", "int8", 2).path
    return libs


@pytest.mark.parametrize(("name", "scheme", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_dot_instruction_in_library(arm_libraries, name: str, scheme, pattern: str) -> None:
    import re

    asm = subprocess.run([OBJDUMP, "-d", str(arm_libraries[name])], capture_output=True, text=True,
                         check=True).stdout
    assert len(re.findall(pattern, asm)) >= 19, f"{name}: convolutions should be tensorized with {scheme.instruction}"
    if scheme is NEON:
        assert not re.search(r"\bsdot\b", asm), "the Pi 4 (Cortex-A72) has no dot-product instructions"


@pytest.mark.emulated
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_bit_exact_on_emulated_board(arm_libraries, resnet_qg, name: str) -> None:
    reason = _emulator_skip_reason()
    if reason:
        pytest.skip(reason)
    x = quantize_input(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))).numpy()
    with open_device(_target(name), progress=False) as dev:
        out = dev.load(arm_libraries[name]).run(x)
    assert out.dtype == np.int32 and np.array_equal(out, run_integer(resnet_qg, x))
