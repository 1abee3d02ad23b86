"""Tensor intrinsics of our own (TVM ships VNNI, AVX-512 ``vpmaddubsw``, NEON and ``sdot`` ones).

``laaq_dot_16x4_u8s8_avx2``: 16 int32 lanes += Σ_{k<4} a[k]·b[lane, k] with u8 activations and s8
weights — ``vpmaddubsw`` (u8 × s8, adjacent pairs summed into a *saturating* int16) then
``vpmaddwd`` against ones (pairs of int16 into int32), twice (8 lanes each). Exact only for narrow
weights: a pair sum is at most 2·255·max|w|, which fits int16 (≤ 32767) iff max|w| ≤ 64, i.e. weights
of **≤ 7 bits** (symmetric 7-bit: |w| ≤ 63 → 32,130). The lowering only gives this intrinsic to layers
whose plan width is ≤ 7 (``Scheme.max_weight_bits``); ``tests/test_fast_int8.py`` checks it at the
extremes (all weights ±63, all activations 255).

``laaq_dot_16x2_i16_avx2``: 16 int32 lanes += Σ_{k<2} a[k]·b[lane, k] with int16 operands — one
broadcast of the activation pair feeding two AVX2 ``vpmaddwd`` (8 lanes each) plus two adds.
TVM has no AVX2 int8 intrinsic; the obvious one (``vpmaddubsw`` on u8×s8, as TVM's AVX-512
fallback does) sums two products into a *saturating* int16, which is wrong for 8-bit weights
(255·127·2 > 32767). Widening both operands to int16 keeps every product and pair-sum exact, so
int8 artefacts stay bit-exact with the reference at any bit width.
"""

from __future__ import annotations

_registered: set[str] = set()


AVX2_DOT_16x2 = "laaq_dot_16x2_i16_avx2"
AVX2_DOT_16x4_U8 = "laaq_dot_16x4_u8s8_avx2"


def _dot_16_lanes_desc(a_dtype: str, b_dtype: str, k: int):
    """What every intrinsic here computes: 16 int32 lanes ``C[i] += Σ_{j<k} A[j]·B[i, j]`` (the block the
    hand schedule tensorizes); the implementations differ only in the instructions and operand dtypes."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((k,), a_dtype, offset_factor=1),
        B: T.Buffer((16, k), b_dtype, offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:k], B[0:16, 0:k])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for j in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vj = T.axis.remap("SR", [i, j])
                        C[vi] = C[vi] + T.cast(A[vj], "int32") * T.cast(B[vi, vj], "int32")

    return desc


def _avx2_dot_16x2():
    """16 lanes from one broadcast of the activation pair: two ``vpmaddwd`` share it."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), "int16", offset_factor=1),
        B: T.Buffer((16, 2), "int16", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:2], B[0:16, 0:2])
            T.writes(C[0:16])
            a_pair = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
            a_x16 = T.reinterpret(T.broadcast(a_pair, 8), dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a_x16, B.vload([0, 0], dtype="int16x16"),
                dtype="int32x8")
            C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a_x16, B.vload([8, 0], dtype="int16x16"),
                dtype="int32x8")

    return impl


def _avx2_dot_16x4_u8():
    """16 lanes from one broadcast of 4 activation bytes: ``vpmaddubsw`` + ``vpmaddwd(·, 1)``, twice."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_quad = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_x32 = T.reinterpret(T.broadcast(a_quad, 8), dtype="int8x32")
            ones = T.broadcast(T.int16(1), 16)
            # pair sums a[2j]·w[2j] + a[2j+1]·w[2j+1] ≤ 2·255·63 = 32,130 < 32,767: exact for ≤ 7-bit weights
            lo = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a_x32,
                                         B.vload([0, 0], dtype="int8x32"), dtype="int16x16")
            hi = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a_x32,
                                         B.vload([8, 0], dtype="int8x32"), dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), lo, ones, dtype="int32x8")
            C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), hi, ones, dtype="int32x8")

    return impl


def register_avx2() -> None:
    """Register :data:`AVX2_DOT_16x2` and :data:`AVX2_DOT_16x4_U8` (idempotent; also in MetaSchedule builder
    workers)."""
    if AVX2_DOT_16x2 in _registered:
        return
    from tvm.s_tir import TensorIntrin

    TensorIntrin.register(AVX2_DOT_16x2, _dot_16_lanes_desc("int16", "int16", 2), _avx2_dot_16x2(), override=True)
    TensorIntrin.register(AVX2_DOT_16x4_U8, _dot_16_lanes_desc("uint8", "int8", 4), _avx2_dot_16x4_u8(),
                          override=True)
    _registered.add(AVX2_DOT_16x2)
