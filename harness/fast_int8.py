"""A blocked-layout integer lowering for CPUs with integer dot-product (or multiply-add) instructions.

Same computation as :func:`harness.lower.lower_integer` (and :mod:`laaq.quant.integer`), bit for
bit, but convolutions are written as ``topi.nn.conv2d_NCHWc_int8``: activations live in
``[N, C/cb, H, W, cb]``, kernels are pre-packed in numpy as ``[O/ob, C/cb, kh, kw, cb/k, ob, k]``
and channel counts are padded with zeros to the block sizes (padded channels carry exact zeros
through requantization and are sliced off before a flatten / global pool). The innermost
``ob`` output channels × ``k`` input channels are tensorized with one instruction pattern, chosen
per target by a :class:`Scheme`:

=============  ==========================  =====================  ==============================
scheme         instruction                 operands               exact because
=============  ==========================  =====================  ==============================
nchwc_vnni     ``vpdpbusd`` (AVX-512 VNNI)  u8 act × s8 w, 16×4    32-bit accumulate, no int16 step
nchwc_avx2     ``vpmaddwd`` (AVX2)         s16 act × s16 w, 16×2  16×16→32-bit products, no
                                                                  saturation (``vpmaddubsw``
                                                                  would saturate for 8-bit w)
nchwc_sdot     ``sdot`` (Armv8.2 dotprod)  s8 act × s8 w, 4×4     act stored as ``u8 − 128``; the
                                                                  ``128·Σw`` it removes is added
                                                                  back through the bias
nchwc_neon     ``smull``+``saddlp`` (NEON)  s8 act × s8 w, 4×4     as sdot (s8×s8 fits int16)
=============  ==========================  =====================  ==============================

The ``−128`` offset of the Arm schemes: ``conv(a, w) = conv(a − 128, w) + 128·Σ_{c,kh,kw} w[o]``
holds exactly when the *padded* input is ``a = 0`` too, so convolutions pad with the stored value
of zero (``−128``), not with 0, and the per-channel constant goes into the int32 bias.

:func:`schedule_blocked` is a fixed hand schedule (no tuning, deterministic): tensorize,
register-block the output width, parallelize over (n, oc chunk, oh), requantization fused into the
tile. MetaSchedule's x86 rules know ``dot_16x4_vnni`` (so tuned VNNI kernels replace the hand
schedule); for the other schemes the hand schedule is applied *before* the tuning database, so
tuning only ever touches the kernels around the convolutions (dense, pooling, packing).

Selected by ``int8_layout`` in a target file (``""`` = automatic from ``mcpu``/``mattr``,
``"nchw"`` = the plain lowering); see :func:`scheme_for`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, topi

from harness.lower import requantize_expr
from laaq.quant.quantizers import QNode, QuantizedGraph

CONV_BLOCK = "conv2d_NCHWc_int8"
VNNI_MCPUS = ("cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake", "alderlake",
              "sapphirerapids", "emeraldrapids", "graniterapids", "znver4", "znver5")
AVX2_MCPUS = ("x86-64-v3", "x86-64-v4", "haswell", "broadwell", "skylake", "skylake-avx512", "znver1", "znver2",
              "znver3", "alderlake") + VNNI_MCPUS
DOTPROD_MCPUS = ("cortex-a55", "cortex-a75", "cortex-a76", "cortex-a77", "cortex-a78", "cortex-x1", "neoverse-n1",
                 "neoverse-v1", "neoverse-n2", "apple-m1", "apple-m2")


@dataclass(frozen=True)
class Scheme:
    """How one family of CPUs gets its int8 convolutions: block sizes, storage dtypes, instruction."""

    name: str  # the target file's ``int8_layout`` value
    oc_block: int  # output channels per instruction (vector lanes of int32)
    k_block: int  # input channels summed per lane by one instruction
    act_dtype: str  # dtype activations are stored in as conv inputs
    act_offset: int  # stored = true value + act_offset for unsigned (uint8) activations
    weight_dtype: str
    intrin: str  # registered TensorIntrin name
    first_cb: int  # channel block of the network input (3 channels → padded to this)
    metaschedule_tensorizes: bool = False  # MetaSchedule's own rules use ``intrin`` (VNNI only)
    # output-width register blocking the hand schedule may pick (accumulators = ow × oc_block lanes)
    ow_options: tuple[int, ...] = (8, 7, 4, 2, 1)
    pad_per_row: bool = False  # parallel over (n, oh) with the padded input rows built per task

    @property
    def instruction(self) -> str:
        """What to grep for in the disassembly of a compiled library."""
        return {"nchwc_vnni": "vpdpbusd", "nchwc_avx2": "vpmaddwd", "nchwc_sdot": "sdot",
                "nchwc_neon": "smull"}[self.name]


VNNI = Scheme("nchwc_vnni", 16, 4, "uint8", 0, "int8", "dot_16x4_vnni", 4, metaschedule_tensorizes=True)
# 16 lanes = 2 ymm accumulators per output pixel; 4 pixels → 8 accumulators + 2 weight registers + 1
# broadcast of the 16 ymm registers (ow = 8 spills)
AVX2 = Scheme("nchwc_avx2", 16, 2, "int16", 0, "int16", "laaq_dot_16x2_i16_avx2", 2, ow_options=(4, 2, 1),
              pad_per_row=True)
SDOT = Scheme("nchwc_sdot", 4, 4, "int8", -128, "int8", "dot_4x4_i8i8s32_sdot", 4)
NEON = Scheme("nchwc_neon", 4, 4, "int8", -128, "int8", "dot_4x4_i8i8s32_neon", 4)
SCHEMES = {s.name: s for s in (VNNI, AVX2, SDOT, NEON)}
PLAIN = "nchw"


def _attrs(tvm_target: tvm.target.Target) -> tuple[str, list[str], str]:
    mcpu = str(tvm_target.attrs.get("mcpu", ""))
    mattr = [str(a) for a in tvm_target.attrs.get("mattr", [])]
    triple = str(tvm_target.attrs.get("mtriple", ""))
    return mcpu, mattr, triple


def target_has_vnni(tvm_target: tvm.target.Target) -> bool:
    mcpu, mattr, _ = _attrs(tvm_target)
    return mcpu in VNNI_MCPUS or "+avx512vnni" in mattr


def auto_scheme(tvm_target: tvm.target.Target) -> Scheme | None:
    """The scheme a TVM target's CPU features allow (None: none — plain NCHW lowering)."""
    if tvm_target.kind.name != "llvm":
        return None
    mcpu, mattr, triple = _attrs(tvm_target)
    if triple.startswith(("aarch64", "arm64")):
        if "+dotprod" in mattr or mcpu in DOTPROD_MCPUS:
            return SDOT
        return NEON
    if triple and not triple.startswith("x86_64"):
        return None
    if target_has_vnni(tvm_target):
        return VNNI
    if mcpu in AVX2_MCPUS or "+avx2" in mattr:
        return AVX2
    return None


def scheme_for(target) -> Scheme | None:
    """The scheme for ``target`` (a :class:`harness.targets.Target`): its ``int8_layout`` field, or
    automatic from the CPU features its ``[tvm]`` table names."""
    layout = getattr(target, "int8_layout", "") or ""
    if layout == PLAIN:
        return None
    if layout:
        return SCHEMES[layout]  # validated against harness.targets.INT8_LAYOUTS when the file was loaded
    return auto_scheme(tvm.target.Target(dict(target.tvm)))



def lower_integer_for(qg: QuantizedGraph, batch: int, target) -> tvm.IRModule:
    """The integer module for ``target``: its blocked scheme where it has one, else NCHW."""
    scheme = scheme_for(target)
    if scheme is not None:
        return lower_integer_nchwc(qg, batch, scheme)
    from harness.lower import lower_integer

    return lower_integer(qg, batch)


def _const(a: np.ndarray) -> relax.Constant:
    return relax.const(tvm.runtime.tensor(np.ascontiguousarray(a)))


def _ceil(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def pack_kernel(w: np.ndarray, cb: int, scheme: Scheme = VNNI) -> np.ndarray:
    """int8 ``[O, C, kh, kw]`` → ``[Op/ob, Cp/cb, kh, kw, cb/k, ob, k]`` (zero-padded O and C)."""
    ob, kb = scheme.oc_block, scheme.k_block
    o, c, kh, kw = w.shape
    op, cp = _ceil(o, ob), _ceil(c, cb)
    wp = np.zeros((op, cp, kh, kw), dtype=scheme.weight_dtype)
    wp[:o, :c] = w
    # input channel = ic_outer*cb + ic_f_inner*k + ic_s_inner (topi's data indexing)
    wp = wp.reshape(op // ob, ob, cp // cb, cb // kb, kb, kh, kw)
    return np.ascontiguousarray(wp.transpose(0, 2, 5, 6, 3, 1, 4))


def blocked_dense_weight(w: np.ndarray, c: int, h: int, w_: int, cb: int) -> np.ndarray:
    """Dense weights ``[O, C·H·W]`` (torch's NCHW flatten order) → 1×1-conv weights ``[O, Kp, 1, 1]``
    whose columns follow the blocked activation order ``(c // cb, h, w, c % cb)``; columns of padded
    channels are zero. Lets a dense read the blocked activation as is (no transpose back to NCHW)."""
    o = w.shape[0]
    cp = _ceil(c, cb)
    full = np.zeros((o, cp, h, w_), dtype=w.dtype)
    full[:, :c] = w.reshape(o, c, h, w_)
    blocked = full.reshape(o, cp // cb, cb, h, w_).transpose(0, 1, 3, 4, 2).reshape(o, -1)
    return np.ascontiguousarray(blocked.reshape(o, -1, 1, 1))


def offset_bias(b_q: np.ndarray, w_q: np.ndarray, offset: int) -> np.ndarray:
    """Bias that undoes a stored-input offset: ``conv(a + off, w) − off·Σw = conv(a, w)``."""
    return (b_q.astype(np.int64) - offset * w_q.reshape(len(w_q), -1).astype(np.int64).sum(1)).astype(np.int32)


def _pad_vec(v: np.ndarray, n: int, dtype) -> np.ndarray:
    out = np.zeros(n, dtype=dtype)
    out[: len(v)] = v
    return out


def _store(v: te.Tensor | tvm.tirx.PrimExpr, offset: int, dtype: str):
    """A true activation value → its stored form (offset, then narrowed to the scheme's dtype)."""
    if offset:
        return (v.astype("int16") + tvm.tirx.const(offset, "int16")).astype(dtype)
    return v.astype(dtype)


def _pack_input(x: te.Tensor, cb: int, offset: int = 0, dtype: str = "uint8") -> te.Tensor:
    """uint8 NCHW network input → stored ``[N, C/cb, H, W, cb]`` (padded channels = stored zero)."""
    n, c, h, w = (int(s) for s in x.shape)
    cp = _ceil(c, cb)
    return te.compute((n, cp // cb, h, w, cb),
                      lambda i, co, y, z, ci: tvm.tirx.if_then_else(
                          co * cb + ci < c, _store(x[i, co * cb + ci, y, z], offset, dtype),
                          tvm.tirx.const(offset, dtype)),
                      name="pack_input")


def _to_stored(a: te.Tensor, offset: int, dtype: str) -> te.Tensor:
    return te.compute(a.shape, lambda *i: _store(a(*i), offset, dtype), name="to_stored")


def conv_block(data: te.Tensor, kernel: te.Tensor, stride, padding: tuple[int, int], pad_value: int,
               n_elems: int) -> te.Tensor:
    """Pad with the stored value of zero (``pad_value``), then ``conv2d_NCHWc_int8`` without padding."""
    ph, pw = padding
    if ph or pw:
        data = topi.nn.pad(data, (0, 0, ph, pw, 0), (0, 0, ph, pw, 0), pad_value=pad_value, name="data_pad")
    return topi.nn.conv2d_NCHWc_int8(data, kernel, stride, 0, 1, "", "", "int32", n_elems=n_elems)


def _to_nchw(bb: relax.BlockBuilder, a: relax.Expr, channels: int) -> relax.Expr:
    n, co, h, w, cb = (int(s) for s in a.ty.shape)
    t = bb.emit(relax.op.permute_dims(a, [0, 1, 4, 2, 3]))
    t = bb.emit(relax.op.reshape(t, (n, co * cb, h, w)))
    if co * cb != channels:
        t = bb.emit(relax.op.strided_slice(t, axes=[1], begin=[0], end=[channels]))
    return t


def _requant(bb: relax.BlockBuilder, acc: relax.Expr, q: QNode, shape: tuple[int, ...], width: int,
             residual: relax.Expr | None) -> relax.Expr:
    m = q.mult.astype(np.int64)
    mult = (m if m.size == 1 else _pad_vec(m, width, np.int64)).reshape(shape if m.size > 1 else (1,) * len(shape))
    return requantize_expr(bb, acc, mult, q, residual)


def _blocked_acc(bb: relax.BlockBuilder, a: relax.Expr, stored: bool, signed_in: bool, name: str,
                 w4d: np.ndarray, q: QNode, stride, padding: tuple[int, int], scheme: Scheme
                 ) -> tuple[relax.Expr, tuple[int, ...]]:
    """One tensorized conv (a dense is a 1×1 one) on a blocked input: convert the input to the
    scheme's stored form unless it already is, pack ``w4d`` ``[O, C, kh, kw]``, add the bias corrected
    for the storage offset. Returns the int32 accumulator ``[N, Op/ob, OH, OW, ob]`` and the shape
    per-channel constants broadcast with."""
    offset = 0 if signed_in else scheme.act_offset
    if signed_in and scheme.act_dtype == "uint8":
        raise ValueError(f"{scheme.name}: layer {name!r} takes signed activations; "
                         "this scheme multiplies unsigned activations only")
    if not stored:
        a = bb.emit_te(_to_stored, a, offset, scheme.act_dtype, primfunc_name_hint="to_stored")
    ob = scheme.oc_block
    op = _ceil(q.w_q.shape[0], ob)
    acc = bb.emit_te(conv_block, a, _const(pack_kernel(w4d, int(a.ty.shape[4]), scheme)), stride, padding, offset,
                     scheme.k_block, primfunc_name_hint="conv2d_nchwc_int8")
    bshape = (1, op // ob, 1, 1, ob)
    bias = _pad_vec(offset_bias(q.b_q, q.w_q, offset), op, np.int32).reshape(bshape)
    return bb.emit(relax.op.add(acc, _const(bias))), bshape


def lower_integer_nchwc(qg: QuantizedGraph, batch: int, scheme: Scheme = VNNI) -> tvm.IRModule:
    """``main(x: uint8[batch, C, H, W]) -> int32[batch, classes]``, convolutions in NCHW[x]c blocks.

    Between layers activations hold their *true* values (uint8 / int8, as in the reference), so
    residual adds, pooling and flatten are unchanged; a conv input is converted to the scheme's
    stored form just before the conv (an element-wise op that fuses into the producer).
    """
    ob = scheme.oc_block
    bb = relax.BlockBuilder()
    c_in = qg.graph.input_shape[0]
    x = relax.Var("x", relax.TensorType((batch, *qg.graph.input_shape), "uint8"))
    signed = {"input": False}
    with bb.function("main", [x]):
        with bb.dataflow():
            # env: name -> (expr, layout "nchwc" | "stored" | "flat", true channel count)
            env: dict[str, tuple[relax.Expr, str, int]] = {
                "input": (bb.emit_te(_pack_input, x, scheme.first_cb, scheme.act_offset, scheme.act_dtype,
                                     primfunc_name_hint="pack_input"), "stored", c_in)}
            for n in qg.graph.nodes:
                q = qg.qnodes[n.name]
                signed[n.name] = q.out_signed
                a, layout, ch = env[n.inputs[0]]
                if n.op == "flatten":
                    assert layout != "stored", "flatten of the network input is not supported"
                    # blocked input: nothing to do — the dense after it reads the blocks directly
                    # (its weight columns are permuted to the blocked order, see blocked_dense_weight)
                    env[n.name] = (a, layout, ch) if layout == "nchwc" else (
                        bb.emit(relax.op.reshape(a, (batch, -1))), "flat", 0)
                    continue
                if n.op == "gap":
                    assert layout == "nchwc"
                    s = bb.emit(relax.op.sum(relax.op.astype(a, "int32"), axis=[2, 3]))  # [N, C/ob, ob]
                    s = bb.emit(relax.op.reshape(s, (batch, -1)))
                    if int(s.ty.shape[1]) != ch:
                        s = bb.emit(relax.op.strided_slice(s, axes=[1], begin=[0], end=[ch]))
                    env[n.name] = (_requant(bb, s, q, (1, -1), ch, None), "flat", ch)
                    continue
                if n.op == "conv" or layout == "nchwc":  # a dense on blocked activations is a 1×1 conv
                    if n.op == "conv":
                        assert layout in ("nchwc", "stored"), "a conv after a flatten is not supported"
                        pad = n.padding if isinstance(n.padding, (tuple, list)) else (n.padding, n.padding)
                        inp, w4d, stride, pad = a, q.w_q, n.stride, tuple(pad)
                    else:  # [N, C/cb, H, W, cb] read as [N, K/ob, 1, 1, ob], weight columns permuted to match
                        _, cblocks, h, w_, cbk = (int(s_) for s_ in a.ty.shape)
                        inp = bb.emit(relax.op.reshape(a, (batch, cblocks * h * w_ * cbk // ob, 1, 1, ob)))
                        w4d, stride, pad = blocked_dense_weight(q.w_q, ch, h, w_, cbk), 1, (0, 0)
                    acc, bshape = _blocked_acc(bb, inp, layout == "stored", signed[n.inputs[0]], n.name, w4d, q,
                                               stride, pad, scheme)
                    o, op = q.w_q.shape[0], bshape[1] * ob
                    if q.final and n.op == "conv":
                        env[n.name] = (_to_nchw(bb, acc, o), "nchw", o)
                    elif q.final:
                        flat = bb.emit(relax.op.reshape(acc, (batch, op)))
                        if op != o:
                            flat = bb.emit(relax.op.strided_slice(flat, axes=[1], begin=[0], end=[o]))
                        env[n.name] = (flat, "flat", o)
                    else:
                        res = env[n.residual][0] if n.residual else None
                        env[n.name] = (_requant(bb, acc, q, bshape, op, res), "nchwc", o)
                    continue
                # dense on a flat (true-layout) input, e.g. after a global pool: small, a plain matmul
                assert layout == "flat", "dense layers take a flattened input"
                acc = bb.emit(relax.op.matmul(a, relax.op.permute_dims(_const(q.w_q)), out_dtype="int32"))
                acc = bb.emit(relax.op.add(acc, _const(q.b_q.astype(np.int32).reshape(1, -1))))
                if q.final:
                    env[n.name] = (acc, "flat", q.w_q.shape[0])
                    continue
                res = env[n.residual][0] if n.residual else None
                env[n.name] = (_requant(bb, acc, q, (1, -1), q.w_q.shape[0], res), "flat", q.w_q.shape[0])
            out = bb.emit_output(env[qg.graph.output][0])
        bb.emit_func_output(out)
    return bb.get()


# ------------------------------------------------------------------------------------- schedule
def _pick(extent: int, options=(8, 7, 4, 2, 1)) -> int:
    for f in options:
        if extent % f == 0:
            return f
    return 1


def schedule_blocked(func: tvm.tirx.PrimFunc, intrin: str = "dot_16x4_vnni",
                     ow_options: tuple[int, ...] = (8, 7, 4, 2, 1), pad_per_row: bool = False
                     ) -> tvm.tirx.PrimFunc | None:
    """Hand schedule for a (fused) PrimFunc holding a ``conv2d_NCHWc_int8`` block; None if not one.

    Loops (n, oc_chunk, oh, ow, oc_block | ic_outer, kh, kw, ic_f_inner, ic_s_inner) become
    ``parallel(n·oc_chunk·oh) · ow_o · ic_outer · kh · kw · ic_f_inner · unroll(ow_i) · [ob×k intrin]``;
    element-wise consumers are inlined into one epilogue computed per (ow_o) tile, vectorized.
    """
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        conv = sch.get_sblock(CONV_BLOCK)
    except Exception:  # noqa: BLE001 - not a conv function
        return None
    loops = sch.get_loops(conv)
    if len(loops) != 10:
        return None
    n, occ, oh, ow, ocb, ico, kh, kw, icf, ics = loops
    ow_ext = int(sch.get(ow).extent)
    ow_o, ow_i = sch.split(ow, [None, _pick(ow_ext, ow_options)])
    if pad_per_row:
        sch.reorder(n, oh, occ, ow_o, ico, kh, kw, icf, ow_i, ocb, ics)
        row = sch.fuse(n, oh)
        sch.parallel(row)
        for b in sch.get_producers(conv):
            if sch.get(b).name_hint.startswith("data_pad"):
                sch.compute_at(b, row)  # pad only the input rows this output row reads, while in cache
                sch.vectorize(sch.get_loops(b)[-1])
    else:
        sch.reorder(n, occ, oh, ow_o, ico, kh, kw, icf, ow_i, ocb, ics)
        row = None
        sch.parallel(sch.fuse(n, occ, oh))  # before tensorize: parallel needs a plain reduction block below
    # everything else: inline element-wise stages (bias, requant chain), keep padding separate
    blocks = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint != CONV_BLOCK]
    out_block = None
    for b in blocks:
        name = sch.get(b).name_hint
        if name.startswith(("data_pad", "pad")):
            continue
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - the output block (or a reduction) cannot be inlined
            out_block = b
    if out_block is not None:
        try:
            sch.reverse_compute_at(out_block, ow_o)
            sch.vectorize(sch.get_loops(out_block)[-1])
        except Exception:  # noqa: BLE001 - different shape of epilogue: leave it as a separate loop nest
            pass
    sch.decompose_reduction(conv, ico)
    sch.tensorize(ocb, intrin)
    sch.unroll(ow_i)
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(b).name_hint.startswith(("data_pad", "pad")):
            if row is not None and sch.get(b).name_hint.startswith("data_pad"):
                continue  # already under the row loop
            ls = sch.get_loops(b)
            sch.parallel(sch.fuse(*ls[:3]))
            sch.vectorize(ls[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)



def ensure_intrinsic(scheme: Scheme) -> None:
    """Register ``scheme.intrin`` (TVM's own, re-registered VNNI fix, or ours)."""
    from harness import tvm_fixes

    if scheme is VNNI:
        tvm_fixes.fix_vnni_intrinsic()
    elif scheme is AVX2:
        from harness.intrinsics import register_avx2

        register_avx2()
    else:
        tvm_fixes.light_tensor_intrin("arm")


def blocked_schedule_pass(scheme: Scheme) -> tvm.transform.Pass:
    """Module pass: hand-schedule every not-yet-scheduled conv2d_NCHWc_int8 function."""

    @tvm.transform.module_pass(opt_level=0, name="LaaqBlockedInt8Schedule")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        ensure_intrinsic(scheme)
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and func.attrs.get("tirx.is_scheduled"):
                continue
            new = schedule_blocked(func.with_attr("global_symbol", gv.name_hint), scheme.intrin, scheme.ow_options,
                                   scheme.pad_per_row)
            if new is not None:
                mod[gv] = new
        return mod

    return _pass



def schedule_passes(scheme: Scheme | None, database_dir: str | None) -> list[tvm.transform.Pass]:
    """Tuning database and hand schedule, in the order that lets the better one win: VNNI records
    first (MetaSchedule tensorizes with the same intrinsic), otherwise the hand schedule first, so a
    plain-loop record never replaces a tensorized convolution."""
    db = [relax.transform.MetaScheduleApplyDatabase(database_dir)] if database_dir is not None else []
    hand = [blocked_schedule_pass(scheme)] if scheme is not None else []
    return db + hand if scheme is None or scheme.metaschedule_tensorizes else hand + db


def fast_pipeline(tvm_target: tvm.target.Target, database_dir: str | None = None,
                  scheme: Scheme | None = None) -> tvm.transform.Pass:
    """The CPU default pipeline with (optional) tuning database + the blocked hand schedule
    (:func:`schedule_passes`) after legalization and fusion."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    scheme = scheme if scheme is not None else auto_scheme(tvm_target)

    @tvm.transform.module_pass(opt_level=0, name="LaaqFastInt8Pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        passes = ([relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
                  + cpu_generic.library_dispatch_passes(tvm_target) + cpu_generic.legalize_passes(tvm_target))
        passes += schedule_passes(scheme, database_dir)
        passes += cpu_generic.dataflow_lower_passes(tvm_target) + cpu_generic.finalize_passes(tvm_target)
        with tvm_target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_fast(mod: tvm.IRModule, tvm_target: tvm.target.Target, database_dir: str | None = None,
                 scheme: Scheme | None = None):
    """``tvm.compile`` through :func:`fast_pipeline` → a VM executable (``export_library`` as usual)."""
    from harness.tvm_fixes import light_tensor_intrin, target_arch

    light_tensor_intrin(target_arch(tvm_target))
    return tvm.compile(mod, target=tvm_target, relax_pipeline=fast_pipeline(tvm_target, database_dir, scheme))
