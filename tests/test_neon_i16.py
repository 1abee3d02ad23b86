"""``nchwc_neon_i16``: int16 ``smull``/``smlal`` chains for the Pi 4 (Cortex-A72, no dot product), layers ≤ 7 bits.

One intrinsic call sums 4 of TVM's 4×4 NEON blocks (16 input channels) in int16 lanes before one
widening ``saddlp``: each int16 lane holds 4 products a·w with |a| ≤ 128 (activations stored as s8),
exact while 4·128·max|w| ≤ 32,767, i.e. |w| ≤ 63 — every symmetric 7-bit weight. Checked here where
it can fail: cross-compiled, disassembled (``smlal`` present, fewer widenings than ``nchwc_neon``) and
run on the emulated Pi 4 (QEMU enforces the A72), bit-exact with the integer reference, at random
inputs and at the extremes (weights ±63 with one sign per output channel, activations 0 and 255, i.e.
stored −128 and 127). A negative control (the bound check bypassed, 8-bit weights ±127) shows the
extreme test does reach the int16 lane.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_emulated_device import _emulator_skip_reason

from harness.backend.schedule import scheme_of
from harness.backend.schemes import NEON, NEON_I16
from harness.compile import compile_module
from harness.devices import open_device
from harness.lower import lower_integer_for, lower_integer_nchwc
from harness.lower.blocked import layer_scheme, pack_kernel
from harness.profile import resolve
from harness.targets import load_target
from laaq.graph import Graph, Node
from laaq.models import ResNet20, randomize_bn_stats
from laaq.quant.integer import run_integer
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input

OBJDUMP = "aarch64-linux-gnu-objdump"
WIDENING = r"\t(saddlp|sadalp)\s"


def _resnet_qg(bits: list[int]):
    torch.manual_seed(3)
    model = ResNet20(image=16).eval()
    randomize_bn_stats(model)
    graph = model.to_graph()
    plan = QuantPlan({n.name: LayerSetting(bits[i % len(bits)], 1.0) for i, n in enumerate(graph.weighted())})
    return quantize_graph(graph, plan, torch.rand(32, 3, 16, 16))


def _extreme_graph(rng: np.random.Generator, c_in: int = 16) -> Graph:
    """conv (no ReLU: signed output) → conv (ReLU) → flatten → dense; every weight ±1·0.05 (→ ±qmax), and
    half the output channels of each layer one sign throughout, so an int16 lane gets 4 products of one sign."""
    def w(o: int, *rest: int) -> np.ndarray:
        signs = rng.choice([-1.0, 1.0], size=(o, *rest))
        signs[: o // 2] = np.where(np.arange(o // 2) % 2 == 0, 1.0, -1.0).reshape(-1, *([1] * len(rest)))
        return (signs * 0.05).astype(np.float32)

    nodes = [Node("c1", "conv", ["input"], w(16, c_in, 3, 3), np.zeros(16, np.float32), 1, 1, relu=False),
             Node("c2", "conv", ["c1"], w(16, 16, 3, 3), np.zeros(16, np.float32), 1, 1, relu=True),
             Node("flat", "flatten", ["c2"]),
             Node("fc", "dense", ["flat"], w(10, 16 * 6 * 6), np.zeros(10, np.float32))]
    return Graph(nodes, (c_in, 6, 6), 10)


def _extreme_qg(bits: int):
    graph = _extreme_graph(np.random.default_rng(bits))
    qg = quantize_graph(graph, QuantPlan({n.name: LayerSetting(bits, 1.0) for n in graph.weighted()}),
                        torch.rand(16, 16, 6, 6))
    return qg


def _extreme_inputs() -> np.ndarray:
    """All 255, all 0, a checkerboard of both, all 255 again: stored −128 / 127 in every chain."""
    shape = (16, 6, 6)
    return np.stack([np.full(shape, 255, np.uint8), np.zeros(shape, np.uint8),
                     (np.indices(shape).sum(0) % 2 * 255).astype(np.uint8), np.full(shape, 255, np.uint8)])


def _asm(path: Path) -> str:
    return subprocess.run([OBJDUMP, "-d", str(path)], capture_output=True, text=True, check=True).stdout


# ------------------------------------------------------------------------------------------ host only
def test_scheme_per_width_and_bound() -> None:
    """8-bit layers keep nchwc_neon; ≤ 7 bits take the int16 chain, whose bound is |w| ≤ 63 (4·128·63 = 32,256)."""
    assert NEON.for_bits(8) is NEON and all(NEON.for_bits(b) is NEON_I16 for b in range(2, 8))
    assert NEON.family == (NEON, NEON_I16) and NEON_I16.instruction == "smlal"
    assert NEON_I16.in_block == 16 and NEON_I16.first_cb == 16 and NEON.in_block is None
    lane = NEON_I16.chain * 128  # int16 lane: chain products, |a| ≤ 128
    assert lane * NEON_I16.max_abs_weight <= 32767 < lane * (NEON_I16.max_abs_weight + 1)
    qg = _resnet_qg([8, 7, 4])
    picked = {q.setting.bits: layer_scheme(NEON, q) for q in qg.qnodes.values() if q.setting is not None}
    assert picked == {8: NEON, 7: NEON_I16, 4: NEON_I16}


def test_kernel_packing_gives_contiguous_4x4_blocks() -> None:
    """With a 16-channel input block, the kernel slice the intrinsic reads, ``[ic_f, oc_block, ic_s]``, is 4 of
    TVM's 4×4 NEON blocks back to back (input channel = 4·ic_f + ic_s); 3 input channels pad with zero weights."""
    w = np.random.default_rng(0).integers(-63, 64, (8, 3, 3, 3), dtype=np.int8)
    p = pack_kernel(w, 16, NEON_I16)
    assert p.shape == (2, 1, 3, 3, 4, 4, 4)
    assert p[1, 0, 2, 1, 0, 3, 2] == w[7, 2, 2, 1] and not p[:, :, :, :, 0, :, 3].any() and not p[:, :, :, :, 1:].any()


def test_weights_beyond_the_chain_bound_are_refused() -> None:
    """A 7-bit layer with a −64 weight would give 4·128·64 = 32,768 in an int16 lane: refused, never miscomputed."""
    qg = _extreme_qg(7)
    qg.qnodes["c2"].w_q = qg.qnodes["c2"].w_q.copy()
    qg.qnodes["c2"].w_q.flat[0] = -64
    with pytest.raises(ValueError, match="not exact with smlal"):
        lower_integer_nchwc(qg, 1, NEON)


def test_layers_get_their_scheme_in_the_module() -> None:
    """The conv functions of a mixed plan are recognised as both schemes (same dtypes and k: the ic_f extent tells)."""
    import tvm

    qg = _resnet_qg([8, 7, 4, 6, 3, 5, 2])
    mod = lower_integer_nchwc(qg, 1, NEON)  # emit_te: each conv is its own PrimFunc already
    found = [scheme_of(f, NEON.family) for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert set(found) == {NEON, NEON_I16, None}  # None: the non-conv functions (packing, requantization)


# --------------------------------------------------------------------------------- cross-compiled, emulated
@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict[str, tuple[object, Path]]:
    if shutil.which("aarch64-linux-gnu-g++") is None or shutil.which(OBJDUMP) is None:
        pytest.skip("aarch64 cross toolchain missing (make emu-device installs it)")
    out = tmp_path_factory.mktemp("neon-i16")
    target = resolve("rpi4")
    assert target.scheme is NEON
    unsafe = dataclasses.replace(NEON_I16, max_abs_weight=128, max_weight_bits=8)  # the bound check bypassed
    unsafe_target = dataclasses.replace(target, scheme=dataclasses.replace(NEON, narrower=unsafe))
    cases = {"w8": (_resnet_qg([8]), target), "w7": (_resnet_qg([7]), target),
             "mixed": (_resnet_qg([8, 7, 4, 6, 3, 5, 2]), target),
             "extreme7": (_extreme_qg(7), target),
             "unsafe8": (_extreme_qg(8), unsafe_target),
             # ≤ 4-bit kernels stored packed (target file pack_weights = true), unpacked in the conv's function
             "packed": (_resnet_qg([8, 7, 4, 6, 3, 5, 2]),
                        dataclasses.replace(target, target=dataclasses.replace(target.target, pack_weights=True)))}
    libs = {}
    for name, (qg, prof) in cases.items():
        batch = 4 if name.startswith(("extreme", "unsafe")) else 2
        libs[name] = (qg, compile_module(lower_integer_for(qg, batch, prof), prof, out / f"{name}.so", "int8",
                                         batch).path)
    return libs


def test_disassembly_has_smlal_and_fewer_widenings(libraries) -> None:
    """All-7-bit ResNet-20: every conv's inner loop chains smlal (none in an all-8-bit build's convs would be
    needed), and the widening saddlp/sadalp count drops ≥ 3× (one per 16 input channels instead of per 4)."""
    w8, w7 = _asm(libraries["w8"][1]), _asm(libraries["w7"][1])
    count = {name: {i: len(re.findall(rf"\t{i}\s", asm)) for i in ("smull", "smlal", "smlal2", "saddlp", "sadalp")}
             for name, asm in (("w8", w8), ("w7", w7))}
    assert count["w7"]["smlal"] + count["w7"]["smlal2"] >= count["w8"]["smlal"] + count["w8"]["smlal2"] + 3 * 19
    widen = {name: len(re.findall(WIDENING, asm)) for name, asm in (("w8", w8), ("w7", w7))}
    assert widen["w7"] * 3 <= widen["w8"], (widen, count)
    assert not re.search(r"\bsdot\b", w7), "the Pi 4 (Cortex-A72) has no dot-product instructions"


@pytest.fixture(scope="module")
def pi4():
    reason = _emulator_skip_reason()
    if reason:
        pytest.skip(reason)
    with open_device(load_target("rpi4"), progress=False) as dev:
        yield dev


@pytest.mark.emulated
@pytest.mark.parametrize("name", ["w7", "mixed", "packed"])
def test_bit_exact_on_emulated_pi4(libraries, pi4, name: str) -> None:
    qg, path = libraries[name]
    x = quantize_input(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))).numpy()
    out = pi4.load(path).run(x)
    assert out.dtype == np.int32 and np.array_equal(out, run_integer(qg, x))


@pytest.mark.emulated
def test_extremes_exact_on_emulated_pi4(libraries, pi4) -> None:
    """Weights ±63 (one sign per channel for half the channels), activations 0/255 and signed ±: each int16
    lane reaches ±(4·128·63) = ±32,256 and stays exact — and without the bound (8-bit ±127 weights forced
    through the chain) the same test fails, so it does reach the lane."""
    x = _extreme_inputs()
    qg, path = libraries["extreme7"]
    for q in qg.qnodes.values():
        if q.w_q is not None:
            assert np.abs(q.w_q).max() == 63
    assert qg.qnodes["c1"].out_signed
    assert np.array_equal(pi4.load(path).run(x), run_integer(qg, x))
    qg8, path8 = libraries["unsafe8"]
    assert not np.array_equal(pi4.load(path8).run(x), run_integer(qg8, x)), "int16 overflow should have shown"
