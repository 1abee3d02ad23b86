"""The default fp32 schedule of ``llvm`` targets (harness/backend/float_schedule.py): NCHWc convolutions
and dense layers on a fixed hand schedule, no tuning database. Outputs match PyTorch; every conv and
dense kernel is scheduled; the same pipeline cross-builds for aarch64; int8 modules are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from harness.backend import float_schedule as fs
from harness.backend.cpu import compile_fast, fast_pipeline
from harness.backend.float_dense import pad_dense_pass
from harness.lower.floating import lower_float

HOST = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})
ARM = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]})


class Tiny(torch.nn.Module):
    """What the float models hold: a 3-channel first conv, BN + ReLU, a strided conv, a 1×1 shortcut with
    a residual add, a global pool and dense layers with a column count no vector width divides."""

    def __init__(self) -> None:
        super().__init__()
        c = torch.nn.Conv2d
        self.c1, self.b1 = c(3, 16, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(16)
        self.c2, self.b2 = c(16, 32, 3, 2, 1, bias=True), torch.nn.BatchNorm2d(32)
        self.sc = c(16, 32, 1, 2, 0, bias=False)
        self.c3 = c(32, 24, 3, 1, 1)  # 24 output channels: 8-wide blocks on AVX-512 too
        self.fc1, self.fc2 = torch.nn.Linear(24 * 5 * 5, 20), torch.nn.Linear(20, 10)
        for bn in (self.b1, self.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)) + self.sc(x))
        x = torch.relu(self.c3(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _model():
    torch.manual_seed(0)
    return Tiny().eval(), (3, 10, 10)


def test_lanes_follow_the_target():
    assert fs.float_lanes(HOST) == 8
    assert fs.float_lanes(AVX512) == 16
    assert fs.float_lanes(ARM) == 4


def test_note_names_the_schedule():
    from harness.profile import resolve

    assert fs.float_schedule_note() == fs.NOTE
    assert fs.float_schedule_note(resolve("x86-avx2")) == "default hand schedule (NCHW8c, no tuning)"
    assert "tuned" in fs.float_schedule_note(resolve("x86-avx2"), tuned=True)


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_torch_and_every_kernel_is_scheduled(batch):
    model, shape = _model()
    mod = lower_float(model, shape, batch)
    x = torch.randn(batch, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    ex = compile_fast(mod, HOST)
    y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())

    lowered = _lowered(mod, HOST)
    names = {gv.name_hint: f for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    convs = [n for n in names if "conv2d_NCHWc" in n]
    dense = [n for n in names if "matmul" in n]
    assert len(convs) == 4 and len(dense) == 2, sorted(names)
    assert not any("conv2d_nchw" in n.lower() and "nchwc" not in n.lower() for n in names)  # no NCHW conv left
    for n in convs + dense:
        assert names[n].attrs.get("tirx.is_scheduled"), n


@pytest.mark.parametrize(("lanes", "widths"), [(8, {24: 20, 16: 10}), (16, {32: 20})])
def test_dense_columns_padded_to_the_lanes(lanes, widths):
    """A dense whose width the vector lanes do not divide runs on zero-padded constant weights and is sliced
    back (fc1: 20 columns; fc2: 10 — padded on 8 lanes, left alone on 16, where it is narrower than a vector);
    the padded module computes what the model does (through the schedule, on this host)."""
    model, shape = _model()
    mod = relax.transform.DecomposeOpsForInference()(lower_float(model, shape, 3))
    padded = pad_dense_pass(lanes)(relax.transform.CanonicalizeBindings()(mod))
    text = padded["main"].script()
    for wide, n in widths.items():
        assert f"R.Tensor((3, {wide}), dtype=\"float32\") = R.matmul" in text
        assert "R.strided_slice(" in text and f"({n},)" in text
    assert text.count("R.strided_slice(") == len(widths)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = model(x).numpy()
    for m in (padded, mod):  # the padded module, and the model through fast_pipeline (which pads for HOST)
        y = relax.VirtualMachine(compile_fast(m, HOST), tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
        assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def _lowered(mod: tvm.IRModule, target) -> tvm.IRModule:
    """The module after the schedule passes of :func:`fast_pipeline` (before VM lowering)."""
    from tvm.relax.backend.cpu_generic import pipeline as cg

    lanes = fs.float_lanes(target)
    passes = [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        pad_dense_pass(lanes),
        fs.float_layout_pass(lanes),
        *cg.legalize_passes(target),
        fs.float_schedule_pass(lanes),
    ]
    with target:
        return tvm.transform.Sequential(passes)(mod)


def test_constant_layouts_fold_in_numpy():
    w = np.arange(32 * 3 * 3 * 3, dtype="float32").reshape(32, 3, 3, 3)
    bb = relax.BlockBuilder()
    with bb.function("main", []):
        with bb.dataflow():
            blocked = lambda o, i, h, v: (o // 8, i // 3, h, v, i % 3, o % 8)  # noqa: E731 - OIHW → OIHW3i8o
            t = bb.emit(relax.op.layout_transform(relax.const(w), blocked))
            out = bb.emit_output(t)
        bb.emit_func_output(out)
    folded = fs.fold_constant_layouts(bb.get())
    consts = []
    is_tensor = lambda e: isinstance(e, tvm.ir.expr.Constant) and hasattr(e.value, "numpy")  # noqa: E731 - not shapes
    relax.analysis.post_order_visit(folded["main"], lambda e: consts.append(e) if is_tensor(e) else None)
    assert len(consts) == 1 and "layout_transform" not in folded["main"].script()
    expect = w.reshape(4, 8, 1, 3, 3, 3).transpose(0, 2, 4, 5, 3, 1)
    np.testing.assert_array_equal(consts[0].value.numpy(), expect)


def test_cross_builds_for_aarch64():
    model, shape = _model()
    mod = lower_float(model, shape, 1)
    lowered = _lowered(mod, ARM)
    convs = [
        f for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and "conv2d_NCHWc" in gv.name_hint
    ]
    assert convs and all(f.attrs.get("tirx.is_scheduled") for f in convs)
    tvm.compile(mod, target=ARM, relax_pipeline=fast_pipeline(ARM))  # code generation for the board succeeds


def test_int8_and_tuned_modules_untouched():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(np.ones((16, 16, 3, 3), "int8"))
            out = bb.emit_output(relax.op.nn.conv2d(x, w, padding=1, out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    assert not fs.has_float_conv(mod)
    assert fs.float_layout_pass(8)(mod).same_as(mod)
