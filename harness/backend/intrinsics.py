"""Tensor intrinsics of our own (TVM ships VNNI, AVX-512 ``vpmaddubsw``, NEON and ``sdot`` ones).

``laaq_dot_4x{4·chain}_i8i8s32_neon_i16`` (:func:`register_neon_chain`): 4 int32 lanes += Σ of
``chain`` of TVM's 4×4 ``dot_4x4_i8i8s32_neon`` blocks, with the products summed in int16 (``smull``
then ``smlal``) and widened once (``saddlp`` + ``addp``) instead of once per block. Exact only while
``chain``·128·max|w| ≤ 32,767 (activations stored as s8, |a| ≤ 128): chain 4 takes |w| ≤ 63, every
symmetric 7-bit weight (``harness.backend.schemes.NEON_I16``; the lowering refuses larger weights).

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


NEON_I16_CHAIN = "laaq_dot_4x{k}_i8i8s32_neon_i16"  # .format(k=4·chain)


def _neon_chain_desc(chain: int):
    """4 int32 lanes ``C[i] += Σ_{f<chain, j<4} A[4f + j]·B[f, i, j]``: ``chain`` of TVM's 4×4 NEON blocks
    (``B`` is the kernel's ``[ic_f, oc_block, ic_s]`` slice, contiguous in the packed layout)."""
    from tvm.script import tirx as T

    k = 4 * chain

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((k,), "int8", offset_factor=1),
        B: T.Buffer((chain, 4, 4), "int8", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:k], B[0:chain, 0:4, 0:4])
            T.writes(C[0:4])
            for f in T.serial(0, chain):
                for i in T.serial(0, 4):
                    for j in T.serial(0, 4):
                        with T.sblock("update"):
                            # block iterators in the conv block's order (oc_block, ic_f, ic_s); loops as tensorized
                            vi, vf, vj = T.axis.remap("SRR", [i, f, j])
                            C[vi] = C[vi] + T.cast(A[vf * 4 + vj], "int32") * T.cast(B[vf, vi, vj], "int32")

    return desc


def _neon_chain_impl(chain: int):
    """``chain`` × (``smull`` | ``smlal``) per half into two int16x8 accumulators, then one ``saddlp`` each and
    an ``addp``: the widening happens once per ``4·chain`` input channels instead of once per 4 (TVM's
    ``dot_4x4_i8i8s32_neon``). Built with the IR builder because the chain is unrolled in Python."""
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder.tirx import prim_func as build_prim_func

    k = 4 * chain

    def intrin(name: str, *args, dtype: str):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)

    with IRBuilder() as ib:
        with build_prim_func():
            A = T.match_buffer(T.arg("A", T.handle()), (k,), "int8", offset_factor=1)
            B = T.match_buffer(T.arg("B", T.handle()), (chain, 4, 4), "int8", offset_factor=1)
            C = T.match_buffer(T.arg("C", T.handle()), (4,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:4], A[0:k], B[0:chain, 0:4, 0:4])
                T.writes(C[0:4])
                halves: list = [None, None]  # int16x8 accumulators: output lanes (0, 1) and (2, 3), 4 k each
                # the k activations in one load, as `chain` int32 lanes (one per block of 4 channels)
                a_all = T.reinterpret(A.vload([0], f"int8x{k}"), dtype=f"int32x{chain}")
                for f in range(chain):
                    # a[4f..4f+3] twice (one copy per output lane of the half), as TVM's NEON intrinsic,
                    # but a lane dup of the one load instead of a broadcast load (ld1r) per block
                    a = T.reinterpret(T.Shuffle([a_all], [f, f]), dtype="int8x8")
                    b = B.vload([f, 0, 0], dtype="int8x16")
                    for h, part in enumerate((T.vectorlow(b, dtype="int8x8"), T.vectorhigh(b, dtype="int8x8"))):
                        prod = intrin("llvm.aarch64.neon.smull.v8i16", a, part, dtype="int16x8")
                        # add(acc, smull) is LLVM's smlal pattern. Each int16 lane sums `chain` products
                        # a·w with |a| ≤ 128 (stored s8) and |w| ≤ max|w|: exact iff chain·128·max|w| ≤ 32,767
                        # (checked per layer in harness.lower.blocked against Scheme.max_weight_bits).
                        halves[h] = prod if halves[h] is None else halves[h] + prod
                lo, hi = (intrin("llvm.aarch64.neon.saddlp.v4i32.v8i16", v, dtype="int32x4") for v in halves)
                T.buffer_store(C, C.vload([0], dtype="int32x4")
                               + intrin("llvm.aarch64.neon.addp.v4i32", lo, hi, dtype="int32x4"),
                               [T.ramp(T.int32(0), 1, 4)])
    return ib.get()


def register_neon_chain(chain: int) -> str:
    """Register the ``chain``-block int16 NEON intrinsic (idempotent); returns its name."""
    name = NEON_I16_CHAIN.format(k=4 * chain)
    if name in _registered:
        return name
    from tvm.s_tir import TensorIntrin

    TensorIntrin.register(name, _neon_chain_desc(chain), _neon_chain_impl(chain), override=True)
    _registered.add(name)
    return name
