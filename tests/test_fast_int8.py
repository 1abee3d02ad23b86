"""The blocked-layout VNNI int8 path: bit-exact with the integer reference, and vpdpbusd really
in the compiled library (disassembled). The run on a VNNI CPU is skipped where the host lacks it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from harness.fast_int8 import compile_fast, lower_integer_for, lower_integer_nchwc, pack_kernel, wants_fast_int8
from harness.targets import load_target
from laaq.models import ResNet20, randomize_bn_stats
from laaq.quant.integer import conv2d_int, run_integer
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input

HOST = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
VNNI = load_target("x86-vnni")
HOST_HAS_VNNI = "avx512_vnni" in Path("/proc/cpuinfo").read_text()


def _mixed_plan(graph) -> QuantPlan:
    bits = [2, 3, 4, 5, 6, 8]
    return QuantPlan({n.name: LayerSetting(bits[i % 6], 1.0 - 0.1 * (i % 4)) for i, n in enumerate(graph.weighted())})


def _run(ex, x: np.ndarray) -> np.ndarray:
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


@pytest.fixture(scope="module")
def resnet_qg():
    torch.manual_seed(0)
    model = ResNet20(image=16).eval()
    randomize_bn_stats(model)  # non-trivial BN: folding matters
    graph = model.to_graph()
    return quantize_graph(graph, _mixed_plan(graph), torch.rand(32, 3, 16, 16))


def test_kernel_packing_matches_reference_conv() -> None:
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (20, 6, 3, 3), dtype=np.int8)
    p = pack_kernel(w, 4)
    assert p.shape == (2, 2, 3, 3, 1, 16, 4)
    # element [oc_chunk, ic_outer, kh, kw, ic_f, oc_block, ic_s] = w[oc_chunk*16+oc_block, ic_outer*4+ic_f*4+ic_s]
    assert p[1, 1, 2, 0, 0, 3, 1] == w[19, 5, 2, 0]
    assert p[1, 1, 2, 0, 0, 4, 1] == 0 and p[0, 1, 0, 0, 0, 0, 3] == 0  # zero padding (O 20→32, C 6→8)


def test_tiny_model_bit_exact(tiny_model, digits) -> None:
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, _mixed_plan(graph), digits.x_train[:128])
    x = digits.x_test[:64]
    xq = quantize_input(x).numpy()
    out = _run(tvm.compile(lower_integer_nchwc(qg, len(x)), target=HOST), xq)
    assert out.dtype == np.int32 and np.array_equal(out, run_integer(qg, xq))


def test_resnet20_residuals_bit_exact(resnet_qg) -> None:
    x = quantize_input(torch.rand(4, 3, 16, 16)).numpy()
    out = _run(tvm.compile(lower_integer_nchwc(resnet_qg, 4), target=HOST), x)
    assert np.array_equal(out, run_integer(resnet_qg, x))


def test_vnni_target_selects_fast_path(resnet_qg) -> None:
    assert wants_fast_int8(VNNI) and not wants_fast_int8(load_target("x86"))
    assert "conv2d_NCHWc_int8" in lower_integer_for(resnet_qg, 1, VNNI).script()


def test_vpdpbusd_in_library_and_exact_on_vnni_host(resnet_qg, tmp_path: Path) -> None:
    ex = compile_fast(lower_integer_nchwc(resnet_qg, 2), VNNI.tvm_target())
    so = tmp_path / "resnet20-vnni.so"
    ex.export_library(str(so))
    asm = subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    assert asm.count("vpdpbusd") >= 19, "every convolution should be tensorized with vpdpbusd"
    if not HOST_HAS_VNNI:
        pytest.skip("host CPU lacks avx512_vnni: compiled and disassembled, not run")
    x = quantize_input(torch.rand(2, 3, 16, 16)).numpy()
    lib = tvm.runtime.load_module(str(so))
    out = relax.VirtualMachine(lib, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(out, run_integer(resnet_qg, x))


def test_single_conv_layouts_exact() -> None:
    """Stride 2 and 1×1 shortcut convs through the blocked layout equal the reference conv."""
    from tvm import topi

    from harness.fast_int8 import _pack_input, _to_nchw

    rng = np.random.default_rng(1)
    for n, c, h, o, k, s, p in [(1, 3, 8, 16, 3, 1, 1), (2, 16, 8, 32, 3, 2, 1), (2, 16, 8, 32, 1, 2, 0)]:
        x = rng.integers(0, 256, (n, c, h, h), dtype=np.uint8)
        w = rng.integers(-128, 128, (o, c, k, k), dtype=np.int8)
        cb = 4 if c % 16 else 16
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType((n, c, h, h), "uint8"))
        with bb.function("main", [xv]):
            with bb.dataflow():
                a = bb.emit_te(_pack_input, xv, cb)
                acc = bb.emit_te(topi.nn.conv2d_NCHWc_int8, a, relax.const(pack_kernel(w, cb)), s, p, 1, "", "",
                                 "int32")
                y = bb.emit_output(_to_nchw(bb, acc, o))
            bb.emit_func_output(y)
        assert np.array_equal(_run(tvm.compile(bb.get(), target=HOST), x), conv2d_int(x, w, s, p))
