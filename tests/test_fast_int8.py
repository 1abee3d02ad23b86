"""The blocked-layout int8 paths: every scheme bit-exact with the integer reference, and its
instruction really in the compiled library (disassembled). AVX2 (``vpmaddwd``) runs on this host;
the VNNI run is skipped where the host lacks it; the Arm schemes run in tests/test_fast_int8_arm.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from target_files import copy_shipped
from tvm import relax

from harness.backend.cpu import compile_fast
from harness.backend.schemes import AVX2, AVX2_U8, NEON, NEON_I16, SCHEMES, SDOT
from harness.backend.schemes import VNNI as VNNI_SCHEME
from harness.lower import lower_integer_for, lower_integer_nchwc
from harness.lower.blocked import blocked_dense_weight, offset_bias, pack_kernel, pack_subbyte, subbyte_width
from harness.profile import resolve
from harness.targets import TargetError, load_target
from laaq.graph import Graph, Node
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


def test_avx2_packing_is_int16_16x2() -> None:
    w = np.random.default_rng(0).integers(-128, 128, (20, 6, 3, 3), dtype=np.int8)
    p = pack_kernel(w, 8, AVX2)
    assert p.dtype == np.int16 and p.shape == (2, 1, 3, 3, 4, 16, 2)
    assert p[1, 0, 1, 2, 2, 3, 1] == w[19, 5, 1, 2] and p[1, 0, 0, 0, 0, 4, 0] == 0  # O 20→32, C 6→8


def test_offset_bias_undoes_stored_offset() -> None:
    """conv(a − 128, w) + (b + 128·Σw) == conv(a, w) + b, with the padded border stored as −128."""
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (1, 5, 6, 6), dtype=np.uint8)
    w = rng.integers(-128, 128, (7, 5, 3, 3), dtype=np.int8)
    b = rng.integers(-1000, 1000, 7).astype(np.int32)
    shifted = np.pad(a.astype(np.int32) - 128, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-128)
    got = conv2d_int(shifted, w, 1, 0) + offset_bias(b, w, -128).reshape(1, -1, 1, 1)
    assert np.array_equal(got, conv2d_int(a, w, 1, 1) + b.reshape(1, -1, 1, 1))


def test_blocked_dense_weight_reads_blocked_activations() -> None:
    """A dense on the blocked activation with permuted columns == the dense on torch's NCHW flatten."""
    rng = np.random.default_rng(5)
    n, c, h, w, cb = 2, 20, 3, 3, 16
    a = rng.integers(0, 256, (n, c, h, w)).astype(np.int64)
    wd = rng.integers(-128, 128, (7, c * h * w)).astype(np.int8)
    blocked = np.zeros((n, 2 * cb, h, w), dtype=np.int64)
    blocked[:, :c] = a
    blocked = blocked.reshape(n, 2, cb, h, w).transpose(0, 1, 3, 4, 2).reshape(n, -1)  # [N, C/cb, H, W, cb]
    wk = blocked_dense_weight(wd, c, h, w, cb)
    assert wk.shape == (7, 2 * cb * h * w, 1, 1)
    assert np.array_equal(blocked @ wk[:, :, 0, 0].T.astype(np.int64), a.reshape(n, -1) @ wd.T.astype(np.int64))


def test_tiny_model_tensorized_on_host_exact(tiny_model, digits) -> None:
    """conv → flatten → dense → dense through the x86 (AVX2) scheme with the hand schedule, run here."""
    graph = tiny_model.to_graph()
    assert [n.op for n in graph.nodes].count("dense") >= 1
    qg = quantize_graph(graph, _mixed_plan(graph), digits.x_train[:128])
    xq = quantize_input(digits.x_test[:50]).numpy()
    x86 = resolve("x86-avx2")
    ex = compile_fast(lower_integer_for(qg, len(xq), x86), x86.tvm_target, scheme=x86.scheme)
    assert np.array_equal(_run(ex, xq), run_integer(qg, xq))


@pytest.mark.parametrize("scheme", list(SCHEMES.values()), ids=list(SCHEMES))
def test_tiny_model_bit_exact(tiny_model, digits, scheme) -> None:
    """Layouts, padding values and offsets of every scheme, compiled as plain loops for this host."""
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, _mixed_plan(graph), digits.x_train[:128])
    x = digits.x_test[:64]
    xq = quantize_input(x).numpy()
    out = _run(tvm.compile(lower_integer_nchwc(qg, len(x), scheme), target=HOST), xq)
    assert out.dtype == np.int32 and np.array_equal(out, run_integer(qg, xq))


@pytest.mark.parametrize("scheme", list(SCHEMES.values()), ids=list(SCHEMES))
def test_resnet20_residuals_bit_exact(resnet_qg, scheme) -> None:
    x = quantize_input(torch.rand(4, 3, 16, 16)).numpy()
    out = _run(tvm.compile(lower_integer_nchwc(resnet_qg, 4, scheme), target=HOST), x)
    assert np.array_equal(out, run_integer(resnet_qg, x))


def test_targets_select_schemes(resnet_qg, tmp_path: Path) -> None:
    expected = {"x86-avx2": AVX2, "x86-vnni": VNNI_SCHEME, "rpi4": NEON, "arm": NEON, "rpi5": SDOT, "cuda": None,
                "x86": VNNI_SCHEME if HOST_HAS_VNNI else AVX2}
    assert {name: resolve(name).scheme for name in expected} == expected
    assert "conv2d_NCHWc_int8" in lower_integer_for(resnet_qg, 1, VNNI).script()
    (tmp_path / "plain.toml").write_text('extends = "x86"\nint8_layout = "nchw"\n')
    copy_shipped(tmp_path, "x86")
    assert resolve(load_target("plain", tmp_path)).scheme is None
    assert "conv2d_NCHWc_int8" not in lower_integer_for(resnet_qg, 1, load_target("plain", tmp_path)).script()
    (tmp_path / "bad.toml").write_text('extends = "x86"\nint8_layout = "nhwc_magic"\n')
    with pytest.raises(TargetError, match="int8_layout"):
        load_target("bad", tmp_path)


def _asm_and_run(qg, scheme, x: np.ndarray, so: Path) -> tuple[str, np.ndarray]:
    ex = compile_fast(lower_integer_nchwc(qg, len(x), scheme), resolve("x86-avx2").tvm_target, scheme=scheme)
    ex.export_library(str(so))
    asm = subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    lib = tvm.runtime.load_module(str(so))
    return asm, relax.VirtualMachine(lib, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def test_avx2_8bit_layers_use_vpmaddwd_only(tmp_path: Path) -> None:
    """8-bit weights: every conv on the exact int16 path (vpmaddwd), never the saturating vpmaddubsw."""
    torch.manual_seed(0)
    graph = ResNet20(image=16).eval().to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), torch.rand(32, 3, 16, 16))
    x = quantize_input(torch.rand(2, 3, 16, 16)).numpy()
    asm, out = _asm_and_run(qg, AVX2, x, tmp_path / "resnet20-avx2-w8.so")
    assert asm.count("vpmaddwd") >= 19, "every convolution should be tensorized with vpmaddwd"
    assert "vpmaddubsw" not in asm, "the saturating u8×s8 multiply-add must not appear for 8-bit weights"
    assert np.array_equal(out, run_integer(qg, x))


def test_avx2_narrow_layers_use_vpmaddubsw_and_stay_exact(resnet_qg, tmp_path: Path) -> None:
    """A mixed 2–8-bit plan: the ≤ 7-bit convolutions take vpmaddubsw, the 8-bit ones vpmaddwd; bit-exact."""
    narrow = [n for n, q in resnet_qg.qnodes.items() if q.setting is not None and q.setting.bits <= 7]
    wide = [n for n, q in resnet_qg.qnodes.items() if q.setting is not None and q.setting.bits == 8]
    assert narrow and wide
    x = quantize_input(torch.rand(2, 3, 16, 16)).numpy()
    asm, out = _asm_and_run(resnet_qg, AVX2, x, tmp_path / "resnet20-avx2-mixed.so")
    assert asm.count("vpmaddubsw") >= len(narrow) and asm.count("vpmaddwd") >= len(narrow) + len(wide)
    assert np.array_equal(out, run_integer(resnet_qg, x))


def test_scheme_per_layer_width() -> None:
    assert AVX2.for_bits(8) is AVX2 and AVX2.for_bits(7) is AVX2_U8 and AVX2.for_bits(2) is AVX2_U8
    assert VNNI_SCHEME.for_bits(4) is VNNI_SCHEME and SDOT.for_bits(3) is SDOT  # no narrower scheme (yet)
    assert NEON.for_bits(8) is NEON and NEON.for_bits(7) is NEON_I16 and NEON.for_bits(3) is NEON_I16
    assert AVX2.family == (AVX2, AVX2_U8) and AVX2_U8.instruction == "vpmaddubsw"
    with pytest.raises(ValueError, match="<= 7 bits"):
        AVX2_U8.for_bits(8)


def _extreme_weights(rng: np.random.Generator):
    """Float weights of one magnitude, random signs: every quantized weight lands on ±(the width's maximum)."""
    return lambda *shape: (rng.choice([-1.0, 1.0], size=shape) * 0.05).astype(np.float32)


def _extreme_graph(rng: np.random.Generator, wmax: int) -> Graph:
    """conv (no ReLU: *signed* output) → conv (ReLU) → flatten → dense: every weight at ±wmax·scale."""
    w = _extreme_weights(rng)
    nodes = [Node("c1", "conv", ["input"], w(8, 1, 3, 3), np.zeros(8, np.float32), 1, 1, relu=False),
             Node("c2", "conv", ["c1"], w(16, 8, 3, 3), np.zeros(16, np.float32), 1, 1, relu=True),
             Node("flat", "flatten", ["c2"]),
             Node("fc", "dense", ["flat"], w(10, 16 * 6 * 6), np.zeros(10, np.float32))]
    return Graph(nodes, (1, 6, 6), 10)


@pytest.mark.parametrize("bits", [7, 8])
def test_overflow_bounds_at_the_extremes(bits, tmp_path: Path) -> None:
    """The bound each AVX2 path relies on, at its extreme: all weights at ±(2^(b−1)−1) (±63 at 7 bits through
    vpmaddubsw: pair sums 2·255·63 = 32,130 ≤ 32,767; ±127 at 8 bits through vpmaddwd), activations all 255,
    all 0 and alternating — and a signed (int8) input into the u8 scheme (stored +128, bias-corrected)."""
    rng = np.random.default_rng(bits)
    graph = _extreme_graph(rng, 2 ** (bits - 1) - 1)
    plan = QuantPlan({n.name: LayerSetting(bits, 1.0) for n in graph.weighted()})
    qg = quantize_graph(graph, plan, torch.rand(16, 1, 6, 6))
    for q in qg.qnodes.values():
        if q.w_q is not None:
            assert np.abs(q.w_q).max() == 2 ** (bits - 1) - 1  # really at the extreme
    assert qg.qnodes["c1"].out_signed  # the second conv reads signed activations
    x = np.stack([np.full((1, 6, 6), 255, np.uint8), np.zeros((1, 6, 6), np.uint8),
                  (np.indices((1, 6, 6)).sum(0) % 2 * 255).astype(np.uint8), np.full((1, 6, 6), 255, np.uint8)])
    asm, out = _asm_and_run(qg, AVX2, x, tmp_path / f"extreme-w{bits}.so")
    assert ("vpmaddubsw" in asm) == (bits <= 7)
    assert np.array_equal(out, run_integer(qg, x))


def test_narrow_scheme_refuses_weights_beyond_its_bound(tiny_model, digits) -> None:
    """A layer marked ≤ 7 bits whose integers exceed ±64 would saturate vpmaddubsw: refused, never miscomputed."""
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 7), digits.x_train[:64])
    first = graph.weighted()[0].name
    qg.qnodes[first].w_q = qg.qnodes[first].w_q.astype(np.int16) * 2  # |w| up to 126 under a 7-bit label
    with pytest.raises(ValueError, match="not exact with vpmaddubsw"):
        lower_integer_nchwc(qg, 1, AVX2)


def test_vpdpbusd_in_library_and_exact_on_vnni_host(resnet_qg, tmp_path: Path) -> None:
    ex = compile_fast(lower_integer_nchwc(resnet_qg, 2, VNNI_SCHEME), resolve(VNNI).tvm_target)
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


def _tile_graph(rng: np.random.Generator) -> Graph:
    """48 output channels (3 blocks: the 2-block register tile does not divide them) → 64 at stride 2 (it does)
    → 64 (signed input: no ReLU before it) → dense; weights at the 8-bit extremes."""
    w = _extreme_weights(rng)
    nodes = [Node("c1", "conv", ["input"], w(48, 3, 3, 3), np.zeros(48, np.float32), 1, 1, relu=True),
             Node("c2", "conv", ["c1"], w(64, 48, 3, 3), np.zeros(64, np.float32), 2, 1, relu=False),
             Node("c3", "conv", ["c2"], w(64, 64, 3, 3), np.zeros(64, np.float32), 1, 1, relu=True),
             Node("flat", "flatten", ["c3"]),
             Node("fc", "dense", ["flat"], w(10, 64 * 5 * 5), np.zeros(10, np.float32))]
    return Graph(nodes, (3, 10, 10), 10)


@pytest.mark.parametrize("pack", [False, True], ids=["int8", "packed-4bit"])
def test_vnni_register_tile_and_row_padding_exact(pack: bool, tmp_path: Path) -> None:
    """The VNNI hand schedule: two output-channel blocks per register tile where they divide the layer (one
    where they do not: 48 channels), padded rows built inside each parallel row task — no padding pass of its
    own; 8-bit extremes and 0/255 inputs; 4-bit packed weights through the unpack stage."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from harness.backend.schedule import blocked_schedule_pass

    assert VNNI_SCHEME.pad_per_row and VNNI_SCHEME.oc_tile == 2
    bits = 4 if pack else 8
    graph = _tile_graph(np.random.default_rng(5))
    qg = quantize_graph(graph, QuantPlan({n.name: LayerSetting(bits, 1.0) for n in graph.weighted()}),
                        torch.rand(16, 3, 10, 10))
    assert qg.qnodes["c2"].out_signed  # c3 reads signed activations (stored + 128)
    x = np.stack([np.full((3, 10, 10), 255, np.uint8), np.zeros((3, 10, 10), np.uint8),
                  (np.indices((3, 10, 10)).sum(0) % 2 * 255).astype(np.uint8)])
    mod = lower_integer_nchwc(qg, len(x), VNNI_SCHEME, pack_weights=pack)
    target = resolve(VNNI).tvm_target
    with target:
        passes = cpu_generic.legalize_passes(target) + [blocked_schedule_pass(VNNI_SCHEME)]
        legal = tvm.transform.Sequential(passes)(mod)
    convs = {gv.name_hint: f.script() for gv, f in legal.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint}
    assert len(convs) == 3
    tiled = [name for name, text in convs.items() if "oc_chunk_1 in T.unroll" in text]
    assert len(tiled) == 2, f"the two 64-channel convs tile 2 output blocks, the 48-channel one not: {tiled}"
    for text in convs.values():  # padding inside the parallel row loop: no root-level pass over the input
        assert "T.parallel" in text and text.index("T.parallel") < text.index("data_pad[")
    so = tmp_path / "tile.so"
    compile_fast(mod, target, scheme=VNNI_SCHEME).export_library(str(so))
    if not HOST_HAS_VNNI:
        pytest.skip("host CPU lacks avx512_vnni: scheduled and compiled, not run")
    out = relax.VirtualMachine(tvm.runtime.load_module(str(so)), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(out, run_integer(qg, x))


def test_single_conv_layouts_exact() -> None:
    """Stride 2 and 1×1 shortcut convs through the blocked layout equal the reference conv."""
    from tvm import topi

    from harness.lower.blocked import _pack_input, _to_nchw

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


# ---- packed sub-byte weights (target file ``pack_weights = true``) ----


def test_pack_subbyte_layout_and_bounds() -> None:
    """Fields of one ob×k tile: run f of the flattened tile in bit field f of bytes 0..run−1, two's complement;
    weights that do not fit the field are refused (never wrapped)."""
    rng = np.random.default_rng(3)
    for width, wmax in ((4, 7), (2, 1)):
        k = rng.integers(-wmax, wmax + 1, (2, 3, 16, 4)).astype(np.int8)
        p = pack_subbyte(k, width)
        per, run = 8 // width, 64 * width // 8
        assert p.shape == (2, 3, run) and p.dtype == np.uint8
        flat = k.reshape(2, 3, 64)
        for f in range(per):  # numpy unpack: the same arithmetic the kernel's unpack stage does in int8 lanes
            field = ((p.astype(np.int16) >> (width * f)) & (2 ** width - 1)).astype(np.int16)
            assert np.array_equal(np.where(field >= 2 ** (width - 1), field - 2 ** width, field),
                                  flat[..., f * run:(f + 1) * run])
    assert subbyte_width(2) == 2 and subbyte_width(3) == subbyte_width(4) == 4 and subbyte_width(5) == 0
    with pytest.raises(ValueError, match="do not fit 4-bit fields"):
        pack_subbyte(np.full((1, 16, 4), 8, np.int8), 4)


@pytest.mark.parametrize("scheme", list(SCHEMES.values()), ids=list(SCHEMES))
def test_packed_weights_bit_exact_every_scheme(resnet_qg, scheme) -> None:
    """Mixed 2–8-bit plan with packing on: 2-bit layers four per byte, 3–4-bit two per byte, wider ones plain."""
    mod = lower_integer_nchwc(resnet_qg, 4, scheme, pack_weights=True)
    assert "unpack_weights" in mod.script()
    x = quantize_input(torch.rand(4, 3, 16, 16)).numpy()
    assert np.array_equal(_run(tvm.compile(mod, target=HOST), x), run_integer(resnet_qg, x))


@pytest.mark.parametrize("bits", [2, 4])
def test_packed_weights_extremes_hand_scheduled(bits, tmp_path: Path) -> None:
    """All weights at ±(2^(b−1)−1) (±7 in 4-bit fields, ±1 in 2-bit ones — the sign extension's extreme) and
    activations at 0/255, through the AVX2 hand schedule (vpmaddubsw) with the unpack stage; a dense reads its
    tile unpacked per output-channel chunk."""
    rng = np.random.default_rng(bits)
    graph = _extreme_graph(rng, 2 ** (bits - 1) - 1)
    qg = quantize_graph(graph, QuantPlan({n.name: LayerSetting(bits, 1.0) for n in graph.weighted()}),
                        torch.rand(16, 1, 6, 6))
    assert all(np.abs(q.w_q).max() == 2 ** (bits - 1) - 1 for q in qg.qnodes.values() if q.w_q is not None)
    x = np.stack([np.full((1, 6, 6), 255, np.uint8), np.zeros((1, 6, 6), np.uint8),
                  (np.indices((1, 6, 6)).sum(0) % 2 * 255).astype(np.uint8)])
    ex = compile_fast(lower_integer_nchwc(qg, len(x), AVX2, pack_weights=True), resolve("x86-avx2").tvm_target,
                      scheme=AVX2)
    assert np.array_equal(_run(ex, x), run_integer(qg, x))


def test_packed_artefact_is_smaller(tiny_model, tmp_path: Path) -> None:
    """The point of packing: a 4-bit plan's library carries half the weight bytes (sizes, not times)."""
    from harness.backend.cpu import compile_fast as build
    from laaq.models import SmallCNN

    torch.manual_seed(0)
    graph = SmallCNN().eval().to_graph()  # fc1 holds most weights: the artefact is mostly weights
    names = [n.name for n in graph.weighted()]
    size = {}
    for tag, bits, pack in (("int8", 8, False), ("int4", 4, False), ("int4-packed", 4, True)):
        qg = quantize_graph(graph, QuantPlan.uniform(names, bits), torch.rand(16, 1, 28, 28))
        so = tmp_path / f"{tag}.so"
        build(lower_integer_nchwc(qg, 1, AVX2, pack_weights=pack), HOST, scheme=AVX2).export_library(str(so))
        size[tag] = so.stat().st_size
    weights = sum(int(np.prod(n.weight.shape)) for n in graph.weighted())
    assert size["int4"] - size["int4-packed"] >= 0.4 * weights  # ≈ half a byte saved per weight
    assert size["int4-packed"] <= 0.6 * size["int8"]


def test_pack_weights_from_target_file(tmp_path: Path) -> None:
    copy_shipped(tmp_path, "x86")
    (tmp_path / "packed.toml").write_text('extends = "x86"\npack_weights = true\n')
    profile = resolve(load_target("packed", tmp_path))
    assert profile.pack_weights and profile.int8_pattern.endswith("-packed")  # its own tuning records
    assert not resolve("x86").pack_weights
    (tmp_path / "bad.toml").write_text('extends = "x86"\npack_weights = "yes"\n')
    with pytest.raises(TargetError, match="pack_weights"):
        load_target("bad", tmp_path)
