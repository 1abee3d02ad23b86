"""Workarounds for the Apache TVM 0.27 wheels, one small function each.

Each function says what breaks without it and how to tell whether it is still needed;
``tests/test_tvm_fixes.py`` has one test per workaround that fails (or reports the workaround
obsolete) as soon as a TVM upgrade changes the picture.

1. :func:`check_ffi_json` — ``tvm.ir.save_json`` on a TIR node segfaults with apache-tvm-ffi
   0.1.15.post2, which kills MetaSchedule's JSON database. We pin 0.1.14.post0 and probe in a
   subprocess (a segfault there does not kill the caller).
2. :func:`builder_initializer` / :func:`local_builder` — the MetaSchedule LocalBuilder starts fresh
   worker processes, each doing ``import tvm.s_tir.tensor_intrin`` (~23 s, mostly CUDA intrinsics),
   so every build hits the 30 s default timeout and tuning silently measures nothing. The
   initializer pre-registers a light ``tvm.s_tir.tensor_intrin`` package holding only the target
   architecture's intrinsics, and the builder gets a longer timeout.
3. :func:`fix_vnni_intrinsic` — with the bundled LLVM 22 the registered ``dot_16x4_vnni`` intrinsic
   fails LLVM verification (``llvm.x86.avx512.vpdpbusd.512`` wants ``<64 x i8>`` operands, TVM
   passes ``<16 x i32>``), so 28 of 32 tuning candidates fail and tuning settles on a schedule
   without VNNI. We re-register it (``override=True``) with the operand types LLVM 22 wants.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import subprocess
import sys
import types
from importlib.metadata import PackageNotFoundError, version

BAD_FFI_VERSIONS = ("0.1.15.post2",)


class TVMEnvironmentError(RuntimeError):
    """The installed TVM wheels are a combination known to break; the message says what to pin."""


# --------------------------------------------------------------------------------------------- 1
_JSON_PROBE = """
import tvm
from tvm import te

a = te.placeholder((4,), "float32", name="a")
b = te.compute((4,), lambda i: a[i] + 1.0, name="b")
f = te.create_prim_func([a, b])
s = tvm.ir.save_json(f)
g = tvm.ir.load_json(s)
tvm.ir.assert_structural_equal(f, g)
print("OK", len(s))
"""


def ffi_version() -> str:
    try:
        return version("apache-tvm-ffi")
    except PackageNotFoundError:
        return "unknown"


def json_roundtrip_ok(timeout_s: float = 120.0) -> tuple[bool, str]:
    """Run ``save_json``/``load_json`` on a TIR PrimFunc in a subprocess: (works?, detail).

    A segfault (negative return code) is reported, not propagated.
    """
    p = subprocess.run([sys.executable, "-c", _JSON_PROBE], capture_output=True, text=True, timeout=timeout_s)
    if p.returncode == 0 and p.stdout.startswith("OK"):
        return True, p.stdout.strip()
    why = f"signal {-p.returncode}" if p.returncode < 0 else f"exit {p.returncode}"
    return False, f"{why}: {(p.stderr or p.stdout).strip().splitlines()[-1:] or ''}"


def check_ffi_json(probe: bool = False) -> None:
    """Refuse the apache-tvm-ffi version whose ``save_json`` segfaults on TIR nodes.

    Still needed? Run ``json_roundtrip_ok()`` with the new ffi version installed: if it returns
    True, drop the version from ``BAD_FFI_VERSIONS`` and the pin in requirements.txt.
    ``probe=True`` also runs that round trip (in a subprocess; ~5 s).
    """
    v = ffi_version()
    if v in BAD_FFI_VERSIONS:
        raise TVMEnvironmentError(
            f"apache-tvm-ffi {v} segfaults in tvm.ir.save_json on TIR nodes (MetaSchedule's JSON database); "
            "install apache-tvm-ffi==0.1.14.post0 (pinned in requirements.txt)")
    if probe:
        ok, detail = json_roundtrip_ok()
        if not ok:
            raise TVMEnvironmentError(f"tvm.ir.save_json/load_json round trip fails with apache-tvm-ffi {v} "
                                      f"({detail}); the tuning database cannot be used")


# --------------------------------------------------------------------------------------------- 2
_ARCH_INTRIN = {"x86": ("x86",), "arm": ("arm_cpu",), "riscv": ("riscv_cpu",), "cuda": ("cuda",),
                "rocm": ("rocm",), "hexagon": ("hexagon",)}


def light_tensor_intrin(arch: str = "x86") -> None:
    """Make ``import tvm.s_tir.tensor_intrin`` cheap: register only ``arch``'s intrinsics.

    The real package ``__init__`` imports CUDA, ROCm, Hexagon, RISC-V, ARM and x86 intrinsics
    (~23 s). We put a package object with the same ``__path__`` into ``sys.modules`` and import just
    the submodule(s) the target needs, so later ``import tvm.s_tir.tensor_intrin`` is a no-op.
    No effect if the real package is already imported.
    """
    name = _ensure_light_package()
    for sub in _ARCH_INTRIN.get(arch, ()):
        importlib.import_module(f"{name}.{sub}")
    if arch == "x86":
        fix_vnni_intrinsic()
        from harness.backend.intrinsics import register_avx2

        register_avx2()


def _ensure_light_package() -> str:
    """Register an empty ``tvm.s_tir.tensor_intrin`` package (submodules importable one by one)."""
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        pkg = types.ModuleType(name)
        pkg.__path__ = list(spec.submodule_search_locations)  # type: ignore[arg-type]
        pkg.__file__ = spec.origin
        pkg.__package__ = name
        pkg.__spec__ = spec  # importlib.util.find_spec(name) must keep working on the stand-in
        pkg.__laaq_light__ = True  # type: ignore[attr-defined]
        sys.modules[name] = pkg
        import tvm.s_tir

        tvm.s_tir.tensor_intrin = pkg  # type: ignore[attr-defined]
    return name


def builder_initializer(arch: str = "x86") -> None:
    """Initializer for MetaSchedule's builder workers: light intrinsic import (+ VNNI fix)."""
    light_tensor_intrin(arch)


def local_builder(isa: str, timeout_s: float = 120.0, max_workers: int | None = None):
    """A ``LocalBuilder`` whose workers start in seconds and get a longer timeout.

    Still needed? Time ``python -c "import tvm.s_tir.tensor_intrin"``: if it is well under the
    builder's 30 s default timeout, the plain ``LocalBuilder()`` works again.
    """
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(initializer=functools.partial(builder_initializer, isa),
                                   timeout_sec=timeout_s, max_workers=max_workers)


# --------------------------------------------------------------------------------------------- 3
VNNI_INTRIN = "dot_16x4_vnni"
_vnni_fixed = False


def _vnni_impl():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def dot_product_16x4_u8i8i32_vnni_llvm22(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            A_u8x4 = A.vload([0], "uint8x4")
            A_i32 = T.reinterpret(A_u8x4, dtype="int32")
            A_i8x64 = T.reinterpret(T.broadcast(A_i32, 16), dtype="int8x64")
            B_i8x64 = B.vload([0, 0], dtype="int8x64")
            C_i32x16 = C.vload([0], dtype="int32x16")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C_i32x16, A_i8x64, B_i8x64, dtype="int32x16")

    return dot_product_16x4_u8i8i32_vnni_llvm22


def fix_vnni_intrinsic() -> None:
    """Re-register ``dot_16x4_vnni`` with ``<64 x i8>`` multiplicand operands (idempotent).

    Still needed? Compile a conv tensorized with the *stock* intrinsic for ``mcpu=znver4``
    (``tests/test_tvm_fixes.py::test_stock_vnni_intrinsic_still_broken`` does): if LLVM accepts it,
    this fix can go.
    """
    global _vnni_fixed
    if _vnni_fixed:
        return
    from tvm.s_tir import TensorIntrin

    _ensure_light_package()
    importlib.import_module("tvm.s_tir.tensor_intrin.x86")  # registers the stock version first
    from tvm.s_tir.tensor_intrin.x86 import dot_product_16x4_u8i8i32_desc

    TensorIntrin.register(VNNI_INTRIN, dot_product_16x4_u8i8i32_desc, _vnni_impl(), override=True)
    _vnni_fixed = True


def stock_vnni_impl():
    """The intrinsic implementation as shipped (for the test that checks the fix is still needed)."""
    from tvm.s_tir.tensor_intrin.x86 import dot_product_16x4_u8i8i32_desc, dot_product_16x4_u8i8i32_vnni

    return dot_product_16x4_u8i8i32_desc, dot_product_16x4_u8i8i32_vnni
