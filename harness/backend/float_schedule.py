"""The default fp32 schedule of ``llvm`` targets: blocked (NCHWc) convolutions on a fixed hand schedule.

No tuning database and no tuning run: every float32 kernel of a model gets a deterministic schedule.

* **Layout** (:func:`float_layout_pass`, Relax, before legalization): every float32 ``R.nn.conv2d``
  (NCHW / OIHW, ungrouped) is converted by TVM's ``ConvertLayout`` to ``NCHW{ib}c`` data,
  ``OIHW{ib}i{ob}o`` kernel and ``NCHW{ob}c`` output, ``ob`` = the target's float32 vector lanes
  (:func:`float_lanes`: 16 with AVX-512, 8 with AVX2, 4 with NEON), ``ib`` = the same or, for a
  first layer of 1–3 channels, the channel count (its input block is then the whole pixel). The
  element-wise ops between convolutions (batch norm, ReLU, residual add) follow the blocked layout;
  layout transforms remain only at the network's input, before a global pool / flatten, and on the
  constant weights, which are pre-packed in numpy (:func:`fold_constant_layouts`), not by a kernel.
* **Lowering**: blocked ``R.nn.conv2d`` → ``topi.nn.conv2d_NCHWc`` (TVM's own legalizer refuses
  blocked layouts).
* **Schedule** (:func:`float_schedule_pass`, TIR, after fusion): ``schedule_conv_nchwc`` — loops
  ``parallel(n·oc_chunk·oh) · ow_o · ic_o · kh · kw · ic_i · unroll(ow_i) · vectorize(oc_block)``,
  accumulators in registers (``ow_i × oc_block``), the fused epilogue (batch norm, ReLU, residual)
  computed per ``ow_o`` tile, padding in a separate parallel loop. Dense / matmul: register-blocked
  rows × vectorized columns (a width the lanes do not divide is padded first:
  :mod:`harness.backend.float_dense`). Other float kernels (element-wise, layout transforms, pooling):
  outer loops parallel, innermost vectorized when it is a multiple of the lanes.

The same code serves x86 (host) and aarch64 (cross): only :func:`float_lanes` reads the target.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import tvm
from tvm import relax, topi

from harness.backend.fold import fold_constant_calls

if TYPE_CHECKING:
    from harness.profile import TargetProfile

CONV = "conv2d_NCHWc"
NOTE = "default hand schedule (NCHWc, no tuning)"
_AVX512_MCPUS = ("skylake-avx512", "cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake",
                 "sapphirerapids", "emeraldrapids", "graniterapids", "znver4", "znver5", "x86-64-v4")


# --------------------------------------------------------------------------------------- target
def float_lanes(tvm_target: tvm.target.Target) -> int:
    """float32 lanes of the target's vector registers: 16 (AVX-512), 8 (AVX2 / x86), 4 (NEON / others)."""
    triple = str(tvm_target.attrs.get("mtriple", "") or "")
    mcpu = str(tvm_target.attrs.get("mcpu", "") or "")
    mattr = [str(a) for a in (tvm_target.attrs.get("mattr", None) or [])]
    if triple.startswith(("aarch64", "arm", "riscv")):
        return 4
    if mcpu in _AVX512_MCPUS or "+avx512f" in mattr:
        return 16
    return 8


def float_schedule_note(profile: TargetProfile | None = None, tuned: bool = False) -> str:
    """How the fp32 kernels of a target are scheduled, for the ``schedule`` / note column of a float row:
    ``tuned`` (a tuning database was applied: then its NCHW records, not this schedule) or the default
    hand schedule with the target's block, e.g. ``default hand schedule (NCHW8c, no tuning)``."""
    if profile is not None and getattr(profile, "backend", "cpu") != "cpu":
        return "dlight"
    if tuned:
        return "tuned DB (NCHW, MetaSchedule records)"
    if profile is None:
        return NOTE
    return f"default hand schedule (NCHW{float_lanes(profile.tvm_target)}c, no tuning)"


# --------------------------------------------------------------------------------------- Relax
def _shape(expr: relax.Expr) -> list[int] | None:
    ty = getattr(expr, "ty", None) or getattr(expr, "struct_info", None)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    try:
        return [int(d) for d in shape]
    except (TypeError, ValueError):
        return None  # symbolic


def _dtype(expr: relax.Expr) -> str:
    ty = getattr(expr, "ty", None) or getattr(expr, "struct_info", None)
    return str(getattr(ty, "dtype", ""))


def _block(extent: int, lanes: int) -> int:
    """The largest power-of-two block ≤ lanes that divides ``extent`` (≥ 4), else 0 (not blocked)."""
    b = lanes
    while b >= 4:
        if extent % b == 0:
            return b
        b //= 2
    return 0


def conv_layouts(call: relax.Call, lanes: int) -> list[str] | None:
    """[data, kernel, out] layouts for a float32 NCHW conv2d, or None to leave it as it is."""
    a = call.attrs
    if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NCHW", "OIHW", "NCHW") or int(a.groups) != 1:
        return None
    if _dtype(call.args[0]) != "float32" or _dtype(call.args[1]) != "float32":
        return None
    ds, ks = _shape(call.args[0]), _shape(call.args[1])
    if ds is None or ks is None:
        return None
    c, o = ds[1], ks[0]
    ob = _block(o, lanes)
    ib = _block(c, lanes) or (c if c <= 4 else 0)
    if not ob or not ib:
        return None
    return [f"NCHW{ib}c", f"OIHW{ib}i{ob}o", f"NCHW{ob}c"]


def has_float_conv(mod: tvm.IRModule) -> bool:
    """Whether a Relax function of ``mod`` holds a float32 ``R.nn.conv2d``."""
    conv = tvm.ir.Op.get("relax.nn.conv2d")
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and e.op == conv and _dtype(e.args[0]) == "float32":
            found.append(e)

    for f in mod.functions.values():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    return bool(found)


def _legalize_blocked_conv(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    a = call.attrs
    if len(str(a.data_layout)) == 4:  # plain layout: TVM's own legalization
        from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

        return _nn_conv2d(bb, call)
    return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], [int(s) for s in a.strides],
                      [int(p) for p in a.padding], [int(d) for d in a.dilation], str(a.data_layout),
                      str(a.out_layout), str(a.out_dtype) or "float32", primfunc_name_hint="conv2d_NCHWc")


def fold_constant_layouts(mod: tvm.IRModule) -> tvm.IRModule:
    """``R.layout_transform`` of a constant → the transformed constant (numpy: no kernel built per weight)."""
    return fold_constant_calls(mod, "relax.layout_transform", lambda call, src: None if call.attrs.pad_value
                               is not None else _apply_index_map(call.attrs.index_map, src))


def _apply_index_map(index_map, src: np.ndarray) -> np.ndarray | None:
    """Apply a (bijective, in-bounds) index map to ``src`` with numpy: each source index's destination."""
    dst_shape = [int(d) for d in index_map.map_shape([tvm.tirx.IntImm("int64", s) for s in src.shape])]
    if int(np.prod(dst_shape)) != src.size:
        return None  # padding: leave it to the kernel
    grids = np.indices(src.shape).reshape(src.ndim, -1)
    syms = index_map.initial_indices
    dst_idx = []
    for expr in index_map.final_indices:
        f = _np_eval(expr, {v.name: g for v, g in zip(syms, grids, strict=True)})
        if f is None:
            return None
        dst_idx.append(np.broadcast_to(f, grids.shape[1:]))
    out = np.empty(dst_shape, dtype=src.dtype)
    out[tuple(dst_idx)] = src.reshape(-1)
    return out


def _np_eval(e, env):
    """numpy value of a TIR index expression over variables / constants / + - * floordiv floormod."""
    t = tvm.tirx
    if isinstance(e, t.Var):
        return env.get(e.name)
    if isinstance(e, t.IntImm):
        return np.int64(e.value)
    ops = {t.Add: np.add, t.Sub: np.subtract, t.Mul: np.multiply, t.FloorDiv: np.floor_divide,
           t.FloorMod: np.mod}
    fn = ops.get(type(e))
    if fn is None:
        return None
    a, b = _np_eval(e.a, env), _np_eval(e.b, env)
    return None if a is None or b is None else fn(a, b)


def float_layout_pass(lanes: int) -> tvm.transform.Pass:
    """Relax module pass: float32 convs to NCHWc (ConvertLayout), constant weights pre-packed, blocked
    convs legalized to ``topi.nn.conv2d_NCHWc``. A module without float32 convs passes unchanged."""
    conv_op = "relax.nn.conv2d"

    def layout_cb(call):
        if getattr(call.op, "name", "") != conv_op:
            return {}
        layouts = conv_layouts(call, lanes)
        return {conv_op: layouts} if layouts else {}

    @tvm.transform.module_pass(opt_level=0, name="LaaqFloatBlockedLayout")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not has_float_conv(mod):
            return mod
        mod = relax.transform.ConvertLayout({}, layout_cb)(mod)
        mod = fold_constant_layouts(mod)
        return relax.transform.LegalizeOps(customize_legalize_map={conv_op: _legalize_blocked_conv})(mod)

    return _pass


# ----------------------------------------------------------------------------------------- TIR
def _pick(extent: int, options: tuple[int, ...]) -> int:
    for f in options:
        if extent % f == 0:
            return f
    return 1


def _ow_options(lanes: int) -> tuple[int, ...]:
    """Output-width register blocks: accumulators (one vector per output pixel) must stay in registers
    (16 vector registers with AVX2, 32 with AVX-512 and NEON)."""
    return (8, 7, 6, 4, 5, 3, 2, 1) if lanes == 8 else (16, 14, 12, 8, 7, 6, 4, 5, 3, 2, 1)


def schedule_conv_nchwc(func: tvm.tirx.PrimFunc, lanes: int) -> tvm.tirx.PrimFunc | None:
    """Hand schedule of a (fused) PrimFunc holding a float32 ``conv2d_NCHWc`` block; None if not one."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        conv = sch.get_sblock(CONV)
    except Exception:  # noqa: BLE001 - not a conv function
        return None
    if str(_buf(sch.get(conv).writes[0]).dtype) != "float32":
        return None
    loops = sch.get_loops(conv)
    if len(loops) != 8:
        return None
    n, occ, oh, ow, ocb, ic, kh, kw = loops
    ic_bn = _conv_ic_block(sch, conv)
    ic_o, ic_i = sch.split(ic, [None, ic_bn])
    ow_ext = int(sch.get(ow).extent)
    ow_o, ow_i = sch.split(ow, [None, _pick(ow_ext, _ow_options(lanes))])
    sch.reorder(n, occ, oh, ow_o, ic_o, kh, kw, ic_i, ow_i, ocb)
    sch.parallel(sch.fuse(n, occ, oh))
    _epilogue(sch, conv, ow_o)  # element-wise stages inlined into the last one, computed per (ow_o) tile
    sch.vectorize(ocb)  # before decompose_reduction: the vectorized loop must hold a complete reduction block
    sch.unroll(ow_i)
    sch.decompose_reduction(conv, ic_o)
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(b).name_hint.startswith(("data_pad", "pad")):
            ls = sch.get_loops(b)
            sch.parallel(sch.fuse(*ls[:3]))
            if int(sch.get(ls[-1]).extent) in (4, 8, 16):
                sch.vectorize(ls[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _buf(region):
    """TVM 0.27: ``TensorRegion.source``; older releases: ``BufferRegion.buffer``."""
    source = getattr(region, "source", None)
    return region.buffer if source is None else source


def _conv_ic_block(sch, conv) -> int:
    """The input block (innermost extent of the conv's data operand)."""
    block = sch.get(conv)
    for r in block.reads:
        buf = _buf(r)
        if len(buf.shape) == 5:
            return int(buf.shape[-1])
    return 1


def _col_block(n: int, lanes: int) -> int:
    """Columns per register tile of a dense: the largest power of two dividing ``n``, at most two vectors
    (odd vector widths, e.g. 20 columns, made LLVM's code 3-5x slower than 4-wide vectors)."""
    b = 1
    while n % (2 * b) == 0 and 2 * b <= 2 * lanes:
        b *= 2
    return b


def _row_block(rows: int, cols: int, lanes: int) -> int:
    """Rows per register tile: as many as the accumulators allow (12 vector registers of 16 with AVX2,
    24 of 32 with AVX-512 / NEON), at most 8."""
    budget = 12 if lanes == 8 else 24
    vecs = max(1, cols // lanes)
    return _pick(rows, tuple(r for r in (8, 6, 4, 3, 2, 1) if r * vecs <= budget))


def schedule_matmul(func: tvm.tirx.PrimFunc, lanes: int) -> tvm.tirx.PrimFunc | None:
    """Hand schedule of a (fused) float32 ``matmul`` ``[B, K] × [K, N]`` (TVM's legalized dense): rows ×
    vectorized columns in registers, ``k`` outside the tile, epilogue (bias, ReLU) per tile."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        mm = sch.get_sblock("matmul")
    except Exception:  # noqa: BLE001 - not a matmul function
        return None
    loops = sch.get_loops(mm)
    if len(loops) != 3 or len(sch.get(mm).reads) != 2 or str(_buf(sch.get(mm).writes[0]).dtype) != "float32":
        return None
    i, j, k = loops
    bi, bj = int(sch.get(i).extent), int(sch.get(j).extent)
    jb = _col_block(bj, lanes)
    ib = _row_block(bi, jb, lanes)
    i_o, i_i = sch.split(i, [None, ib])
    j_o, j_i = sch.split(j, [None, jb])
    sch.reorder(i_o, j_o, k, i_i, j_i)
    outer = sch.fuse(i_o, j_o)
    if bi * bj >= 4 * ib * jb:
        sch.parallel(outer)
    _epilogue(sch, mm, outer)
    sch.vectorize(j_i)
    sch.unroll(i_i)
    sch.decompose_reduction(mm, k)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _epilogue(sch, main, loop) -> None:
    """Inline every element-wise stage after ``main`` into the last one, computed under ``loop``."""
    if not sch.get_consumers(main):
        sch.cache_write(main, 0, "local")
    skip = {sch.get(main).name_hint} | {sch.get(b).name_hint for b in sch.get_producers(main)}
    out_block = None
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(b).name_hint in skip or sch.get(b).name_hint.startswith(("data_pad", "pad")):
            continue
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - the output block cannot be inlined
            out_block = b
    if out_block is not None:
        try:
            sch.reverse_compute_at(out_block, loop)
            sch.vectorize(sch.get_loops(out_block)[-1])
        except Exception:  # noqa: BLE001 - another epilogue shape: leave it as its own loop nest
            pass


def float_schedule_pass(lanes: int) -> tvm.transform.Pass:
    """TIR module pass: hand-schedule every not-yet-scheduled float32 ``conv2d_NCHWc`` and ``matmul``
    function. A kernel the schedule does not fit (an unexpected fused shape) stays unscheduled: slow but
    correct, never a failed build."""

    @tvm.transform.module_pass(opt_level=0, name="LaaqFloatSchedule")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and func.attrs.get("tirx.is_scheduled"):
                continue
            func = func.with_attr("global_symbol", gv.name_hint)
            try:
                new = schedule_conv_nchwc(func, lanes)
                if new is None:
                    new = schedule_matmul(func, lanes)
            except Exception as e:  # noqa: BLE001 - TVM's schedule errors have many types
                logging.getLogger(__name__).warning("fp32 hand schedule skipped %s: %s", gv.name_hint,
                                                    str(e).splitlines()[0] if str(e) else type(e).__name__)
                new = None
            if new is not None:
                mod[gv] = new
        return mod

    return _pass
