"""Dense layers at small batch on AVX-512 VNNI: a weight-streaming kernel that reads 8-, 4- or 2-bit weights.

Why: at batch 1 a dense layer is a matrix–vector product, each weight used once (per image), so its
time is the time to *read* the weights — the multiply (``vpdpbusd``, 64 MACs an instruction) waits on
memory once the weights leave L2. The tensorized 1×1-conv path reads one byte per weight whatever
the plan's width, so a 4-bit dense layer was exactly as slow as an 8-bit one (and slower packed,
unpacked by a stage of its own). Here the unpacking is inside the loop that multiplies:

* weights are stored per 16-channel output block as 64-byte vectors, each holding ``F = 8/width``
  ``[16 lanes × 4 inputs]`` tiles (field ``f`` of byte ``j`` = weight ``(lane j//4, input 4f + j%4)``
  plus ``2^(width−1)``, so a field is never negative) — :func:`pack_gemv`;
* one loop step loads the vector once, rebuilds each tile in registers (mask, shift, subtract:
  ``((v >> width·f) & mask) − half``, exact two's complement since ``|w| < half`` for a
  ``b ≤ width``-bit symmetric weight) and issues its ``vpdpbusd`` against 4 broadcast activation bytes,
  rotating over 2–4 accumulators per image (so back-to-back multiplies do not wait on each other);
* images of a chunk (≤ :data:`MAX_BATCH`) are the inner loop, so each weight vector is read once per chunk,
  and an output block's weights stay in L1/L2 from one chunk to the next.

The result is the same int32 accumulator as the 1×1-conv path, bit for bit (``tests/test_gemv.py``),
so bias, requantization and the stored-input offset are unchanged. Used for dense layers on blocked
activations at any batch :func:`chunk_of` can split (≤ 8, or a multiple of 4–8 images); the lowering
emits :func:`dense_gemv_te` and the VNNI schedule swaps in :func:`dense_gemv_func` (:func:`swap_in_kernel`).
Figures: docs/performance.md (*Weight-streaming dense*).
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import te

MAX_BATCH = 8  # images per pass over a weight vector: 2 accumulators each at 8 (16 of the 32 zmm registers)
LANES = 16  # int32 lanes of one vpdpbusd (= the output-channel block)


def fields(width: int) -> int:
    """Tiles per 64-byte vector: 1 (int8), 2 (4-bit), 4 (2-bit)."""
    if width not in (8, 4, 2):
        raise ValueError(f"weight-streaming dense stores 8-, 4- or 2-bit fields, not {width}")
    return 8 // width


# input channels one loop step covers: 4 tiles of 4 inputs (1, 2 or 4 vectors by width), so up to 4 independent
# accumulators per image (one ``vpdpbusd`` waits ~5 cycles for the previous one on its own)
STEP = 16


def chains(batch: int) -> int:
    """Accumulators per image: 4 (batch ≤ 4), else 2 — 2·batch or more chains in flight, ≤ 16 zmm registers."""
    return 4 if batch <= 4 else 2


def pack_gemv(w: np.ndarray, width: int) -> np.ndarray:
    """int weights ``[O, K]`` → uint8 ``[Op/16, K/step, step·16·width/8]`` for :func:`dense_gemv_func`
    (O padded to 16 with zero rows; K must be a multiple of :data:`STEP`)."""
    o, k = w.shape
    f, step = fields(width), STEP
    if k % step:
        raise ValueError(f"{k} inputs do not split into steps of {step}")
    half = 2 ** (width - 1) if width < 8 else 0
    if width < 8 and np.abs(w.astype(np.int32)).max(initial=0) >= half:
        raise ValueError(f"weights up to {np.abs(w).max()} do not fit {width}-bit fields")
    op = -(-o // LANES) * LANES
    full = np.zeros((op, k), dtype=np.int16)
    full[:o] = w
    # [ob, lane, g, tile, j] → [ob, g, tile, lane, j]: each tile a [16 lanes × 4 inputs] block of 64 values
    tiles = full.reshape(op // LANES, LANES, k // step, step // 4, 4).transpose(0, 2, 3, 1, 4)
    tiles = tiles.reshape(op // LANES, k // step, step // 4, 64)
    if width == 8:
        return np.ascontiguousarray(tiles.reshape(op // LANES, k // step, -1).astype(np.int8).view(np.uint8))
    tiles = (tiles + half).astype(np.uint8)  # fields in [1, 2^width − 1]
    vectors = tiles.reshape(op // LANES, k // step, step // 4 // f, f, 64)
    packed = np.zeros((*vectors.shape[:3], 64), dtype=np.uint8)
    for i in range(f):
        packed |= (vectors[..., i, :] << (width * i)).astype(np.uint8)
    return np.ascontiguousarray(packed.reshape(op // LANES, k // step, -1))


ATTR = "laaq_dense_gemv"  # PrimFunc attribute: the field width; the VNNI hand schedule swaps in the kernel


def _weight(w: te.Tensor, o, kk, width: int):
    """Weight ``(o, kk)`` as int32 from :func:`pack_gemv`'s bytes (scalar form of what the kernel does in
    registers). One branch per field with a constant shift (loop-dependent shift amounts were miscompiled
    by LLVM in the older unpack stage: ``harness.lower.blocked._unpack_subbyte``)."""
    f, step = fields(width), STEP
    t, j = kk % step // 4, kk % 4
    byte = w[o // LANES, kk // step, t // f * 64 + o % LANES * 4 + j].astype("int32")
    if width == 8:
        return (byte ^ 128) - 128  # two's complement byte, sign-extended
    mask, half = (1 << width) - 1, 1 << (width - 1)
    value = None
    for field in range(f):
        v = ((byte >> (field * width)) & mask) - half
        value = v if value is None else tvm.tirx.if_then_else(t % f == field, v, value)
    return value


def dense_gemv_te(a: te.Tensor, w: te.Tensor, width: int) -> te.Tensor:
    """The computation as a portable TE reduction ``[N, K] u8 × packed → [N, Op] int32``: what the lowering
    emits (any CPU compiles it as plain loops — the layout test); on a VNNI target the hand schedule
    replaces the function by :func:`dense_gemv_func`, which computes the same sums."""
    n, k = (int(s) for s in a.shape)
    op = int(w.shape[0]) * LANES
    r = te.reduce_axis((0, k), name="k")
    return te.compute((n, op), lambda i, o: te.sum(a[i, r].astype("int32") * _weight(w, o, r, width), axis=r),
                      name="dense_gemv")


def swap_in_kernel(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """The hand kernel for a function :func:`dense_gemv_te` produced (same signature and attributes), else None."""
    if not func.attrs or ATTR not in func.attrs:
        return None
    a, _, out = (p.ty for p in func.params)  # TVM 0.27: buffer-typed parameters
    new = dense_gemv_func(int(a.shape[0]), int(a.shape[1]), int(out.shape[1]), int(func.attrs[ATTR]))
    for key in ("global_symbol",):
        if key in func.attrs:
            new = new.with_attr(key, func.attrs[key])
    return new


def chunk_of(batch: int) -> int:
    """Images one pass over a weight block serves: the batch itself up to :data:`MAX_BATCH`, else its largest
    divisor ≤ 8 (0: none ≥ 4 — such a batch is left to the tensorized conv path, see ``streams``)."""
    if batch <= MAX_BATCH:
        return batch
    best = max(d for d in range(1, MAX_BATCH + 1) if batch % d == 0)
    return best if best >= 4 else 0


def streams(batch: int) -> bool:
    """Whether a dense at this batch takes the kernel: any batch whose chunk is the batch or ≥ 4 images."""
    return chunk_of(batch) > 0


@functools.lru_cache(maxsize=64)  # parsed once per shape: TVMScript re-reads this file's source on every parse
def dense_gemv_func(batch: int, k: int, op: int, width: int) -> tvm.tirx.PrimFunc:
    """``acc[n, o] = Σ_k a[n, k]·w[o, k]`` (u8 stored activations × signed weights → int32) reading
    :func:`pack_gemv`'s bytes. Parallel over output blocks; per block, chunks of images (one block's weights,
    ``K·16·width/8`` bytes, stay in L1/L2 between chunks), and per weight vector every image of the chunk."""
    from tvm.script import tirx as T

    nb = chunk_of(batch)
    if nb == 0:
        raise ValueError(f"weight-streaming dense takes a batch ≤ {MAX_BATCH} or one with a divisor in [4, 8], "
                         f"not {batch}")
    f, step, c = fields(width), STEP, chains(nb)
    loads = step // 4 // f  # 64-byte vectors per step: 1, 2 or 4 by width
    tiles = step // 4
    nbytes = loads * 64
    mask, half = (1 << width) - 1, (1 << (width - 1)) if width < 8 else 0
    vpdpbusd = "llvm.x86.avx512.vpdpbusd.512"

    @T.prim_func(private=True)
    def dense_gemv(a: T.Buffer((batch, k), "uint8"), w: T.Buffer((op // 16, k // step, nbytes), "uint8"),
                   acc_out: T.Buffer((batch, op), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for ob in T.parallel(op // 16):
            acc = T.alloc_buffer((nb * c * 16,), "int32", scope="local")
            for chunk in range(batch // nb):
                for i in range(nb * c):
                    acc[T.ramp(i * 16, 1, 16)] = T.broadcast(0, 16)
                for g in range(k // step):
                    for t in T.unroll(tiles):
                        vec = T.meta_var(w.vload([ob, g, (t // f) * 64], "uint8x64"))
                        for n in T.unroll(nb):
                            quad = T.meta_var(T.reinterpret(a.vload([chunk * nb + n, g * step + t * 4], "uint8x4"),
                                                            dtype="int32"))
                            lanes = T.meta_var(T.reinterpret(T.broadcast(quad, 16), dtype="int8x64"))
                            at = T.meta_var((n * c + t % c) * 16)
                            if width == 8:
                                acc[T.ramp(at, 1, 16)] = T.call_llvm_pure_intrin(
                                    T.llvm_lookup_intrinsic_id(vpdpbusd), acc.vload([at], "int32x16"), lanes,
                                    T.reinterpret(vec, dtype="int8x64"), dtype="int32x16")
                            else:  # the tile rebuilt in registers: field t % f of every byte, less the offset
                                acc[T.ramp(at, 1, 16)] = T.call_llvm_pure_intrin(
                                    T.llvm_lookup_intrinsic_id(vpdpbusd), acc.vload([at], "int32x16"), lanes,
                                    T.reinterpret((vec >> T.broadcast(T.uint8(t % f * width), 64))
                                                  & T.broadcast(T.uint8(mask), 64), dtype="int8x64")
                                    - T.broadcast(T.int8(half), 64), dtype="int32x16")
                for n in range(nb):
                    if c == 4:
                        acc_out[chunk * nb + n, T.ramp(ob * 16, 1, 16)] = (
                            acc.vload([n * 64], "int32x16") + acc.vload([n * 64 + 16], "int32x16")) + (
                            acc.vload([n * 64 + 32], "int32x16") + acc.vload([n * 64 + 48], "int32x16"))
                    else:
                        acc_out[chunk * nb + n, T.ramp(ob * 16, 1, 16)] = acc.vload([n * 32], "int32x16") + \
                            acc.vload([n * 32 + 16], "int32x16")

    return dense_gemv
