"""A blocked-layout integer lowering for CPUs with integer dot-product instructions.

Same computation as :func:`harness.lower.lower_integer` (and :mod:`laaq.quant.integer`), bit for
bit, but convolutions are written as ``topi.nn.conv2d_NCHWc_int8``: activations live in
``[N, C/16, H, W, 16]`` (the first layer's input in ``[N, C/4, H, W, 4]``), kernels are pre-packed
in numpy as ``[O/16, C/cb, kh, kw, cb/4, 16, 4]`` and channel counts are padded with zeros to the
block sizes (padded channels carry exact zeros through requantization and are sliced off before a
flatten / global pool). uint8 activations × int8 weights → int32 is the operand pattern of x86
``vpdpbusd`` (AVX-512 VNNI); the innermost 16 output channels × 4 input channels are tensorized
with the ``dot_16x4_vnni`` intrinsic (re-registered by :mod:`harness.tvm_fixes` for LLVM 22).

Two ways to schedule:

* :func:`vnni_schedule_pass` — a fixed hand schedule (no tuning, deterministic): tensorize,
  register-block the output width, parallelize over (n, oc chunk, oh), requantization fused into
  the tile. This is what ``compile_fast`` uses when no tuning database covers a kernel.
* MetaSchedule (``harness.tune``), whose x86 rules tensorize with the same intrinsic when the
  target's ``mcpu`` has VNNI. Its measurements must run on a VNNI CPU.

Selected by ``int8_layout = "nchwc_vnni"`` in a target file (see :func:`wants_fast_int8`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, topi

from harness.lower import requantize_expr
from laaq.quant.quantizers import QNode, QuantizedGraph

OC_BLOCK = 16  # output channels per vpdpbusd (16 int32 lanes of a zmm register)
K_BLOCK = 4  # u8×s8 products summed per lane
LAYOUT_NAME = "nchwc_vnni"
CONV_BLOCK = "conv2d_NCHWc_int8"
VNNI_MCPUS = ("cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake", "alderlake",
              "sapphirerapids", "emeraldrapids", "graniterapids", "znver4", "znver5")


def wants_fast_int8(target) -> bool:
    """Does ``target`` (a :class:`harness.targets.Target`) get this lowering?

    ``int8_layout`` field (once ``Target`` has it): ``"nchwc_vnni"`` → yes, ``"nchw"`` → no,
    ``""``/absent → automatic: yes when the target's ``mcpu``/``mattr`` has AVX-512 VNNI
    (e.g. ``targets/x86-vnni.toml``).
    """
    layout = getattr(target, "int8_layout", "") or ""
    if layout:
        return layout == LAYOUT_NAME
    return target.tvm.get("kind") == "llvm" and target_has_vnni(tvm.target.Target(dict(target.tvm)))


def lower_integer_for(qg: QuantizedGraph, batch: int, target) -> tvm.IRModule:
    """The integer module for ``target``: blocked VNNI layout where the target asks for it, else NCHW."""
    if wants_fast_int8(target):
        return lower_integer_nchwc(qg, batch)
    from harness.lower import lower_integer

    return lower_integer(qg, batch)


def target_has_vnni(tvm_target: tvm.target.Target) -> bool:
    mcpu = str(tvm_target.attrs.get("mcpu", ""))
    mattr = [str(a) for a in tvm_target.attrs.get("mattr", [])]
    return mcpu in VNNI_MCPUS or "+avx512vnni" in mattr


def _const(a: np.ndarray) -> relax.Constant:
    return relax.const(tvm.runtime.tensor(np.ascontiguousarray(a)))


def _ceil(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def pack_kernel(w: np.ndarray, cb: int) -> np.ndarray:
    """int8 ``[O, C, kh, kw]`` → ``[Op/16, Cp/cb, kh, kw, cb/4, 16, 4]`` (zero-padded O and C)."""
    o, c, kh, kw = w.shape
    op, cp = _ceil(o, OC_BLOCK), _ceil(c, cb)
    wp = np.zeros((op, cp, kh, kw), dtype=np.int8)
    wp[:o, :c] = w
    # input channel = ic_outer*cb + ic_f_inner*4 + ic_s_inner (topi's data indexing)
    wp = wp.reshape(op // OC_BLOCK, OC_BLOCK, cp // cb, cb // K_BLOCK, K_BLOCK, kh, kw)
    return np.ascontiguousarray(wp.transpose(0, 2, 5, 6, 3, 1, 4))


def _pad_vec(v: np.ndarray, n: int, dtype) -> np.ndarray:
    out = np.zeros(n, dtype=dtype)
    out[: len(v)] = v
    return out


def _pack_input(x: te.Tensor, cb: int) -> te.Tensor:
    n, c, h, w = (int(s) for s in x.shape)
    cp = _ceil(c, cb)
    return te.compute((n, cp // cb, h, w, cb),
                      lambda i, co, y, z, ci: tvm.tirx.if_then_else(co * cb + ci < c, x[i, co * cb + ci, y, z],
                                                                    tvm.tirx.const(0, x.dtype)),
                      name="pack_input")


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


def lower_integer_nchwc(qg: QuantizedGraph, batch: int) -> tvm.IRModule:
    """``main(x: uint8[batch, C, H, W]) -> int32[batch, classes]``, convolutions in NCHW[x]c int8."""
    bb = relax.BlockBuilder()
    c_in = qg.graph.input_shape[0]
    x = relax.Var("x", relax.TensorType((batch, *qg.graph.input_shape), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            # env: name -> (expr, layout "nchwc" | "flat", true channel count)
            env: dict[str, tuple[relax.Expr, str, int]] = {
                "input": (bb.emit_te(_pack_input, x, K_BLOCK, primfunc_name_hint="pack_input"), "nchwc", c_in)}
            for n in qg.graph.nodes:
                q = qg.qnodes[n.name]
                a, layout, ch = env[n.inputs[0]]
                if n.op == "flatten":
                    t = _to_nchw(bb, a, ch) if layout == "nchwc" else a
                    env[n.name] = (bb.emit(relax.op.reshape(t, (batch, -1))), "flat", 0)
                    continue
                if n.op == "gap":
                    s = bb.emit(relax.op.sum(relax.op.astype(a, "int32"), axis=[2, 3]))  # [N, C/16, 16]
                    s = bb.emit(relax.op.reshape(s, (batch, -1)))
                    if int(s.ty.shape[1]) != ch:
                        s = bb.emit(relax.op.strided_slice(s, axes=[1], begin=[0], end=[ch]))
                    env[n.name] = (_requant(bb, s, q, (1, -1), ch, None), "flat", ch)
                    continue
                if n.op == "conv":
                    assert layout == "nchwc", "a conv after a flatten is not supported"
                    cb = int(a.ty.shape[4])
                    o = q.w_q.shape[0]
                    op = _ceil(o, OC_BLOCK)
                    w = _const(pack_kernel(q.w_q, cb))
                    acc = bb.emit_te(topi.nn.conv2d_NCHWc_int8, a, w, n.stride, n.padding, 1, f"NCHW{cb}c",
                                     f"NCHW{OC_BLOCK}c", "int32", primfunc_name_hint="conv2d_nchwc_int8")
                    bshape = (1, op // OC_BLOCK, 1, 1, OC_BLOCK)
                    acc = bb.emit(relax.op.add(acc, _const(_pad_vec(q.b_q.astype(np.int32), op, np.int32)
                                                           .reshape(bshape))))
                    if q.final:
                        env[n.name] = (_to_nchw(bb, acc, o), "nchw", o)
                        continue
                    res = env[n.residual][0] if n.residual else None
                    env[n.name] = (_requant(bb, acc, q, bshape, op, res), "nchwc", o)
                    continue
                # dense: small, stays a plain int32 matmul
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


def schedule_vnni(func: tvm.tirx.PrimFunc, intrin: str = "dot_16x4_vnni") -> tvm.tirx.PrimFunc | None:
    """Hand schedule for a (fused) PrimFunc holding a ``conv2d_NCHWc_int8`` block; None if not one.

    Loops (n, oc_chunk, oh, ow, oc_block | ic_outer, kh, kw, ic_f_inner, ic_s_inner) become
    ``parallel(n·oc_chunk·oh) · ow_o · ic_outer · kh · kw · ic_f_inner · unroll(ow_i) · [16×4 vnni]``;
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
    ow_o, ow_i = sch.split(ow, [None, _pick(ow_ext)])
    sch.reorder(n, occ, oh, ow_o, ico, kh, kw, icf, ow_i, ocb, ics)
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
            ls = sch.get_loops(b)
            sch.parallel(sch.fuse(*ls[:3]))
            sch.vectorize(ls[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def vnni_schedule_pass(intrin: str = "dot_16x4_vnni") -> tvm.transform.Pass:
    """Module pass: hand-schedule every not-yet-scheduled conv2d_NCHWc_int8 function."""
    from harness.tvm_fixes import fix_vnni_intrinsic

    @tvm.transform.module_pass(opt_level=0, name="LaaqVNNISchedule")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        fix_vnni_intrinsic()
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and func.attrs.get("tirx.is_scheduled"):
                continue
            new = schedule_vnni(func.with_attr("global_symbol", gv.name_hint), intrin)
            if new is not None:
                mod[gv] = new
        return mod

    return _pass


def fast_pipeline(tvm_target: tvm.target.Target, database_dir: str | None = None) -> tvm.transform.Pass:
    """The CPU default pipeline with (optional) tuning database + the VNNI hand schedule after fusion."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    @tvm.transform.module_pass(opt_level=0, name="LaaqFastInt8Pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        passes = ([relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
                  + cpu_generic.library_dispatch_passes(tvm_target) + cpu_generic.legalize_passes(tvm_target))
        if database_dir is not None:
            passes.append(relax.transform.MetaScheduleApplyDatabase(database_dir))
        if target_has_vnni(tvm_target):
            passes.append(vnni_schedule_pass())
        passes += cpu_generic.dataflow_lower_passes(tvm_target) + cpu_generic.finalize_passes(tvm_target)
        with tvm_target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_fast(mod: tvm.IRModule, tvm_target: tvm.target.Target, database_dir: str | None = None):
    """``tvm.compile`` through :func:`fast_pipeline` → a VM executable (``export_library`` as usual)."""
    from harness.tvm_fixes import light_tensor_intrin, target_arch

    light_tensor_intrin(target_arch(tvm_target))
    return tvm.compile(mod, target=tvm_target, relax_pipeline=fast_pipeline(tvm_target, database_dir))
