"""The weight-streaming dense kernel (8/4/2-bit fields unpacked in registers): exact, used where it should be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax, te

from harness.backend import gemv
from harness.backend.schemes import AVX2, VNNI
from harness.compile import build_executable
from harness.devices import open_device
from harness.layer_latency import layer_table
from harness.lower import lower_integer_nchwc
from harness.profile import resolve
from laaq.importer import import_model
from laaq.quant.integer import run_integer
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input

HOST_HAS_VNNI = "avx512_vnni" in Path("/proc/cpuinfo").read_text()
PLAIN = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
needs_vnni = pytest.mark.skipif(not HOST_HAS_VNNI, reason="runs vpdpbusd: this CPU has no AVX-512 VNNI")


def _limit(width: int) -> int:
    return 127 if width == 8 else 2 ** (width - 1) - 1  # symmetric b-bit weights, b ≤ width


def _cases(rng: np.random.Generator):
    """(batch, K, O, width, activations, weights): random, and the extremes of both operands."""
    for n, k, o in ((1, 64, 20), (3, 128, 40), (gemv.MAX_BATCH, 256, 16), (12, 64, 20)):  # 12: chunks of 6
        for width in (8, 4, 2):
            lim = _limit(width)
            yield n, k, o, width, rng.integers(0, 256, (n, k), dtype=np.uint8), \
                rng.integers(-lim, lim + 1, (o, k)).astype(np.int8)
            # extremes: all activations 255 against ±max weights with one sign per output channel
            signs = np.where(np.arange(o) % 2, 1, -1).astype(np.int8)[:, None]
            yield n, k, o, width, np.full((n, k), 255, np.uint8), np.broadcast_to(signs * lim, (o, k)).astype(np.int8)


def _run(lib, a: np.ndarray, packed: np.ndarray, n: int, op: int) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros((n, op), np.int32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(packed), out)
    return out.numpy()


def test_portable_form_equals_numpy() -> None:
    """The TE reduction the lowering emits (plain loops on any x86): packing and field order are right."""
    rng = np.random.default_rng(0)
    for n, k, o, width, a, w in _cases(rng):
        packed = gemv.pack_gemv(w, width)
        ta = te.placeholder((n, k), "uint8", name="a")
        tw = te.placeholder(packed.shape, "uint8", name="w")
        func = te.create_prim_func([ta, tw, gemv.dense_gemv_te(ta, tw, width)])
        lib = tvm.compile(tvm.IRModule({"main": func}), target=PLAIN)
        got = _run(lib, a, packed, n, packed.shape[0] * 16)
        assert np.array_equal(got[:, :o], a.astype(np.int64) @ w.T.astype(np.int64)), (n, k, o, width)
        assert not got[:, o:].any(), "padded output channels must hold zeros"


@needs_vnni
def test_kernel_equals_numpy() -> None:
    """The hand kernel (vpdpbusd, tiles rebuilt in registers) on this CPU, random and extreme operands."""
    rng = np.random.default_rng(1)
    host = tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})
    for n, k, o, width, a, w in _cases(rng):
        packed = gemv.pack_gemv(w, width)
        op = packed.shape[0] * 16
        lib = tvm.compile(tvm.IRModule({"main": gemv.dense_gemv_func(n, k, op, width).with_attr(
            "global_symbol", "main")}), target=host)
        assert "vpdpbusd" in (lib.mod.imports[0] if lib.mod.imports else lib.mod).inspect_source("asm")
        got = _run(lib, a, packed, n, op)
        assert np.array_equal(got[:, :o], a.astype(np.int64) @ w.T.astype(np.int64)), (n, k, o, width)


def test_packing_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="4-bit fields"):
        gemv.pack_gemv(np.full((16, 16), 8, np.int8), 4)
    with pytest.raises(ValueError, match="steps of 16"):
        gemv.pack_gemv(np.zeros((16, 8), np.int8), 2)
    with pytest.raises(ValueError, match="8-, 4- or 2-bit"):
        gemv.pack_gemv(np.zeros((16, 8), np.int8), 3)
    assert gemv.pack_gemv(np.zeros((20, 64), np.int8), 4).nbytes * 2 == gemv.pack_gemv(
        np.zeros((20, 64), np.int8), 8).nbytes, "4-bit storage is half the bytes of 8-bit"


def _head_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 48), nn.ReLU(), nn.Linear(48, 10)).eval()


def _qgraph(bits: tuple[int, ...]):
    graph = import_model(_head_model(), (1, 4, 4))
    plan = QuantPlan({n.name: LayerSetting(b, 1.0) for n, b in zip(graph.weighted(), bits, strict=True)})
    return quantize_graph(graph, plan, torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(0)))


def _dense_funcs(mod: tvm.IRModule) -> list[int]:
    return sorted(int(f.attrs[gemv.ATTR]) for f in mod.functions.values()
                  if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and gemv.ATTR in f.attrs)


@pytest.mark.parametrize("bits", [(8, 8, 8), (8, 4, 2), (6, 3, 5)])
def test_model_with_streamed_dense_equals_reference(bits) -> None:
    """Both dense layers streamed (8/4/2-bit storage by plan width) and bit-exact with the integer reference,
    as plain loops here and — on a VNNI CPU — through the x86-vnni pipeline that swaps in the kernel."""
    qg = _qgraph(bits)
    x = quantize_input(torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))).numpy()
    ref = run_integer(qg, x)
    mod = lower_integer_nchwc(qg, 3, VNNI)
    widths = [8 if b > 4 else 4 if b > 2 else 2 for b in bits[1:]]
    assert _dense_funcs(mod) == sorted(widths)
    run = lambda ex: relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()  # noqa: E731
    assert np.array_equal(run(tvm.compile(mod, target=PLAIN)), ref)
    if HOST_HAS_VNNI:
        assert np.array_equal(run(build_executable(mod, resolve("x86-vnni"), progress=False)), ref)


def test_streaming_only_where_it_pays() -> None:
    """Batches the kernel cannot chunk by 4–8 images (a prime above 8) take the tensorized conv path; AVX2 has
    no such kernel."""
    qg = _qgraph((8, 4, 8))
    assert _dense_funcs(lower_integer_nchwc(qg, gemv.MAX_BATCH, VNNI)) == [4, 8]
    assert _dense_funcs(lower_integer_nchwc(qg, 64, VNNI)) == [4, 8] and gemv.chunk_of(64) == 8
    assert _dense_funcs(lower_integer_nchwc(qg, 11, VNNI)) == [] and gemv.chunk_of(11) == 0
    assert _dense_funcs(lower_integer_nchwc(qg, 1, AVX2)) == []


@needs_vnni
def test_latency_table_times_each_storage(private_cache) -> None:
    """Dense layers get one timing per storage width (8/4/2) in the per-layer table; convs one per scheme."""
    graph = import_model(_head_model(), (1, 4, 4))
    vnni = resolve("x86-vnni")
    with open_device(vnni, progress=False) as session:
        table = layer_table(graph, vnni, session, (2, 4, 8))
    schemes = {(t.layer, t.bits): t.scheme for t in table}
    dense = [n.name for n in graph.weighted() if n.op == "dense"]
    conv = [n.name for n in graph.weighted() if n.op == "conv"]
    for name in dense:
        assert [schemes[(name, b)] for b in (2, 4, 8)] == [f"nchwc_vnni+stream{w}" for w in (2, 4, 8)]
    assert {schemes[(conv[0], b)] for b in (2, 4, 8)} == {"nchwc_vnni"}
    assert all(t.median_ms > 0 for t in table)


def test_elementwise_schedule_inlines_and_keeps_values() -> None:
    """The default schedule of a stand-alone element-wise function (a dense's requantization): one loop nest,
    vectorized, same values; reductions are left alone."""
    from harness.backend.elementwise import schedule_elementwise

    a = te.placeholder((4, 48), "int32", name="acc")
    b = te.compute(a.shape, lambda i, j: a[i, j].astype("int64") * 1234567, name="mul")
    c = te.compute(a.shape, lambda i, j: (b[i, j] >> 20).astype("int32"), name="shift")
    d = te.compute(a.shape, lambda i, j: tvm.te.max(tvm.te.min(c[i, j], 255), 0).astype("uint8"), name="clip")
    func = te.create_prim_func([a, d]).with_attr("global_symbol", "main")
    sched = schedule_elementwise(func)
    assert sched is not None and sched.attrs["tirx.is_scheduled"]
    script = sched.script()
    assert 'sblock("mul")' not in script and 'sblock("shift")' not in script and "T.vectorized" in script
    x = np.random.default_rng(0).integers(-2**20, 2**20, (4, 48), dtype=np.int32)
    outs = []
    for f in (func, sched):
        out = tvm.runtime.tensor(np.zeros((4, 48), np.uint8))
        tvm.compile(tvm.IRModule({"main": f}), target=PLAIN)["main"](tvm.runtime.tensor(x), out)
        outs.append(out.numpy())
    assert np.array_equal(*outs) and outs[0].any()
    r = te.reduce_axis((0, 48), "r")
    s = te.compute((4,), lambda i: te.sum(a[i, r], axis=r), name="sum")
    assert schedule_elementwise(te.create_prim_func([a, s]).with_attr("global_symbol", "main")) is None
