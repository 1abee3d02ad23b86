"""One test per TVM 0.27 workaround in harness/backend/tvm_fixes.py: each shows whether it is still needed.

If one of the "still broken" tests fails after a TVM upgrade, the upstream bug is fixed: drop the
workaround it names (and this test).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax, topi

from harness.backend import tvm_fixes
from harness.backend.schedule import schedule_blocked
from harness.lower.blocked import pack_kernel

ZNVER4 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})


def test_ffi_version_guard_and_json_roundtrip() -> None:
    """(1) save_json on a TIR node must not segfault: probed in a subprocess."""
    assert tvm_fixes.ffi_version() not in tvm_fixes.BAD_FFI_VERSIONS
    ok, detail = tvm_fixes.json_roundtrip_ok()
    assert ok, f"tvm.ir.save_json round trip failed ({detail}); MetaSchedule's JSON database is unusable"
    tvm_fixes.check_ffi_json()


def test_light_intrinsic_import_and_builder() -> None:
    """(2) The builder initializer registers the x86 intrinsics without the CUDA ones, and a
    LocalBuilder with it builds a kernel."""
    init = Path(importlib.util.find_spec("tvm.s_tir.tensor_intrin").origin).read_text()
    still_needed = "cuda" in init  # the stock package imports CUDA intrinsics (~23 s) for any target
    code = (
        "import sys, harness.backend.tvm_fixes as f\n"
        "f.builder_initializer('x86')\n"
        "import tvm.s_tir.tensor_intrin\n"
        "from tvm.s_tir import TensorIntrin\n"
        "TensorIntrin.get('dot_16x4_vnni')\n"
        "assert 'tvm.s_tir.tensor_intrin.cuda' not in sys.modules\n"
        "print('OK')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-2000:]

    from tvm.s_tir import meta_schedule as ms
    from tvm.script import tirx as T

    @T.prim_func
    def add_one(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
        for i in range(64):
            b[i] = a[i] + T.float32(1)

    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
    builder = tvm_fixes.local_builder("x86", max_workers=1)
    (res,) = builder.build([ms.builder.BuilderInput(tvm.IRModule({"main": add_one}), target)])
    assert res.error_msg is None and res.artifact_path, res.error_msg
    assert still_needed, "tvm.s_tir.tensor_intrin no longer imports CUDA intrinsics: light_tensor_intrin may go"


def _conv_func(intrin: str) -> tvm.IRModule:
    """One uint8×int8 NCHWc conv, hand-scheduled and tensorized with ``intrin``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 8, 8, 16), "uint8"))
    w = relax.const(pack_kernel(np.ones((16, 16, 3, 3), np.int8), 16))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit_te(topi.nn.conv2d_NCHWc_int8, x, w, 1, 1, 1, "", "", "int32",
                                          primfunc_name_hint="conv"))
        bb.emit_func_output(y)
    mod = bb.get()
    mod["conv"] = schedule_blocked(mod["conv"], intrin)
    return mod


def _disassemble(ex, tmp_path: Path) -> str:
    so = tmp_path / "lib.so"
    ex.export_library(str(so))
    return subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True, check=True).stdout


def test_vnni_intrinsic_fixed_and_stock_still_broken(tmp_path: Path) -> None:
    """(3) The re-registered dot_16x4_vnni compiles to vpdpbusd; the stock one still fails LLVM 22."""
    from tvm.s_tir import TensorIntrin

    tvm_fixes.light_tensor_intrin("x86")
    ex = tvm.compile(_conv_func(tvm_fixes.VNNI_INTRIN), target=ZNVER4)
    assert "vpdpbusd" in _disassemble(ex, tmp_path)

    desc, impl = tvm_fixes.stock_vnni_impl()
    TensorIntrin.register("laaq_stock_dot_16x4_vnni", desc, impl, override=True)
    with pytest.raises(Exception) as e:  # noqa: PT011 - TVM raises its own error types
        tvm.compile(_conv_func("laaq_stock_dot_16x4_vnni"), target=ZNVER4)
    msg = str(e.value)
    assert "verification failed" in msg and "vpdpbusd" in msg, f"stock intrinsic failed differently: {msg[:500]}"
