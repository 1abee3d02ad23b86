"""The fixed hand schedule of the blocked int8 convolutions, and the order it meets the tuning database.

:func:`schedule_blocked` is deterministic (no tuning): tensorize with the scheme's intrinsic,
register-block the output width (and, where the register file allows, several output-channel blocks),
parallelize over (n, oc chunk, oh) — or over (n, oh) with each task padding its own input rows —
requantization fused into the tile. The hand schedule is applied *before* the tuning database, so tuning
only ever touches the kernels around the convolutions (dense, pooling, packing). That holds for VNNI too,
although MetaSchedule's x86 rules know ``dot_16x4_vnni``: 64 trials of it made ResNet-20 int8 at batch 1
1.36× slower than this schedule (znver5, 2 threads, interleaved A/B, seventh session).
"""

from __future__ import annotations

import tvm
from tvm import relax

from harness.backend import gemv
from harness.backend.elementwise import schedule_elementwise
from harness.backend.schemes import AVX2, AVX2_U8, CONV_BLOCK, VNNI, Scheme

UNPACK = "unpack_weights"  # the stage that rebuilds a packed sub-byte kernel (harness.lower.blocked)


def _pick(extent: int, options=(8, 7, 4, 2, 1)) -> int:
    for f in options:
        if extent % f == 0:
            return f
    return 1


def schedule_blocked(func: tvm.tirx.PrimFunc, intrin: str = "dot_16x4_vnni",
                     ow_options: tuple[int, ...] = (8, 7, 4, 2, 1), pad_per_row: bool = False,
                     chain: int = 1, oc_tile: int = 1) -> tvm.tirx.PrimFunc | None:
    """Hand schedule for a (fused) PrimFunc holding a ``conv2d_NCHWc_int8`` block; None if not one.

    Loops (n, oc_chunk, oh, ow, oc_block | ic_outer, kh, kw, ic_f_inner, ic_s_inner) become
    ``parallel(n·oc_chunk·oh) · ow_o · ic_outer · kh · kw · ic_f_inner · unroll(ow_i) · [ob×k intrin]``;
    element-wise consumers are inlined into one epilogue computed per (ow_o) tile, vectorized.
    ``chain`` > 1 (int16 chains, :data:`harness.backend.schemes.NEON_I16`): ``ic_f_inner`` (extent ``chain``)
    moves inside ``ow_i`` and into the intrinsic, which then covers ``chain × ob × k``.
    ``oc_tile`` > 1 (chain 1 only): that many output-channel blocks join ``ow_i`` in the register tile
    (``oc_tile × ow_i`` accumulators), so each broadcast input quad feeds ``oc_tile`` instructions; a layer
    whose ``oc_chunk`` extent it does not divide keeps one block.
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
    inner = (ow_i, icf) if chain > 1 else (icf, ow_i)  # the intrinsic covers ic_f too when it chains blocks
    unpack = next((b for b in sch.get_producers(conv) if sch.get(b).name_hint.startswith(UNPACK)), None)
    chunk = None  # the loop a packed kernel's tile is unpacked under (None: whole kernel once per call)
    occ_i = None  # the output-channel blocks of the register tile (``oc_tile``), when split off
    if unpack is not None and int(sch.get(oh).extent) * ow_ext == 1:
        # a dense (1×1 output) with packed weights: output-channel chunks outermost, so each chunk's tile is
        # unpacked once, into cache, and used by every image of the batch (the whole-kernel pass would
        # write and re-read the unpacked weights through memory: ~3× the traffic at batch 1)
        sch.reorder(occ, n, oh, ow_o, ico, kh, kw, *inner, ocb, ics)
        sch.parallel(occ)
        sch.compute_at(unpack, occ)
        _vectorize_unpack(sch, unpack, parallel=False)
        chunk, row = occ, None
    elif pad_per_row:
        occ, inner, occ_i = _oc_tile(sch, occ, inner, oc_tile if chain == 1 else 1)
        sch.reorder(n, oh, occ, ow_o, ico, kh, kw, *inner, ocb, ics)
        row = sch.fuse(n, oh)
        sch.parallel(row)
        for b in sch.get_producers(conv):
            if sch.get(b).name_hint.startswith("data_pad"):
                sch.compute_at(b, row)  # pad only the input rows this output row reads, while in cache
                sch.vectorize(sch.get_loops(b)[-1])
    else:
        occ, inner, occ_i = _oc_tile(sch, occ, inner, oc_tile if chain == 1 else 1)
        sch.reorder(n, occ, oh, ow_o, ico, kh, kw, *inner, ocb, ics)
        row = None
        sch.parallel(sch.fuse(n, occ, oh))  # before tensorize: parallel needs a plain reduction block below
    # everything else: inline element-wise stages (bias, requant chain), keep padding separate
    blocks = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint != CONV_BLOCK]
    out_block = None
    for b in blocks:
        name = sch.get(b).name_hint
        if name.startswith(("data_pad", "pad", UNPACK)):
            continue  # padding stays separate; packed weights are unpacked once per call, not per use
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
    sch.tensorize(icf if chain > 1 else ocb, intrin)
    sch.unroll(ow_i)
    if occ_i is not None:
        sch.unroll(occ_i)
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(b).name_hint.startswith(("data_pad", "pad")):
            if row is not None and sch.get(b).name_hint.startswith("data_pad"):
                continue  # already under the row loop
            ls = sch.get_loops(b)
            sch.parallel(sch.fuse(*ls[:3]))
            sch.vectorize(ls[-1])
        elif sch.get(b).name_hint.startswith(UNPACK) and chunk is None:  # at the root: whole kernel once per call
            _vectorize_unpack(sch, b, parallel=True)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)



def _oc_tile(sch, occ, inner: tuple, tile: int) -> tuple:
    """Split ``tile`` output-channel blocks off ``occ`` and put them just outside ``ow_i``:
    ``(icf, ow_i)`` → ``(icf, occ_i, ow_i)``. Returns (outer occ, inner loops, occ_i or None)."""
    if tile <= 1 or int(sch.get(occ).extent) % tile:
        return occ, inner, None
    occ, occ_i = sch.split(occ, [None, tile])
    return occ, (*inner[:-1], occ_i, inner[-1]), occ_i


def ensure_intrinsic(scheme: Scheme) -> None:
    """Register ``scheme.intrin`` (TVM's own, re-registered VNNI fix, or ours)."""
    from harness.backend import tvm_fixes

    if scheme is VNNI:
        tvm_fixes.fix_vnni_intrinsic()
    elif scheme in (AVX2, AVX2_U8):
        from harness.backend.intrinsics import register_avx2

        register_avx2()
    elif scheme.chain > 1:
        from harness.backend.intrinsics import register_neon_chain

        assert register_neon_chain(scheme.chain) == scheme.intrin
    else:
        tvm_fixes.light_tensor_intrin("arm")


def _vectorize_unpack(sch, block, parallel: bool) -> None:
    """Unpack loops ``[O/ob, C/cb, kh, kw, cb/k, ob, k]`` from bytes ``[..., run]``: the ``ob × k`` tile is
    split into its runs, each one contiguous load + shift + sign extension, vectorized."""
    ls = sch.get_loops(block)
    if parallel:
        sch.parallel(ls[0])
    run = int(_region_buffer(sch.get(block).reads[0]).shape[-1])
    sch.vectorize(sch.split(sch.fuse(*ls[-2:]), [None, run])[1])


def _region_buffer(region):
    """TVM 0.27: ``TensorRegion.source``; older releases: ``BufferRegion.buffer``."""
    source = getattr(region, "source", None)
    return region.buffer if source is None else source


def conv_operands(func: tvm.tirx.PrimFunc) -> tuple[str, str, int, int] | None:
    """(data dtype, kernel dtype, kernel's innermost extent k, its ``ic_f`` extent) of a function's
    conv2d_NCHWc_int8 block, or None."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        block = sch.get(sch.get_sblock(CONV_BLOCK))
    except Exception:  # noqa: BLE001 - not a conv function
        return None
    buf = _region_buffer
    reads = [buf(r) for r in block.reads if buf(r).name != buf(block.writes[0]).name]
    if len(reads) != 2:
        return None
    data, kernel = reads
    return str(data.dtype), str(kernel.dtype), int(kernel.shape[-1]), int(kernel.shape[-3])


def scheme_of(func: tvm.tirx.PrimFunc, family: tuple[Scheme, ...]) -> Scheme | None:
    """Which scheme of the family lowered this conv function (its operand dtypes and k block say it)."""
    ops = conv_operands(func)
    if ops is None:
        return None
    # a chain scheme is told apart from its parent (same dtypes and k) by the ic_f extent of its kernel
    for s in sorted(family, key=lambda s: s.chain == 1):
        if (s.act_dtype, s.weight_dtype, s.k_block) == ops[:3] and (s.chain == 1 or ops[3] == s.chain):
            return s
    return None


def blocked_schedule_pass(scheme: Scheme) -> tvm.transform.Pass:
    """Module pass: hand-schedule every not-yet-scheduled conv2d_NCHWc_int8 function, each with the
    intrinsic of the family member that lowered it (a layer of ≤ 7 bits may use a narrower one); swap in the
    weight-streaming dense kernel; give the remaining element-wise functions the default CPU schedule."""

    @tvm.transform.module_pass(opt_level=0, name="LaaqBlockedInt8Schedule")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for member in scheme.family:
            ensure_intrinsic(member)
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            kernel = gemv.swap_in_kernel(func) if scheme.streaming_dense else None
            if kernel is not None:  # the hand kernel streams packed weights
                mod[gv] = kernel
                continue
            if func.attrs and func.attrs.get("tirx.is_scheduled"):
                continue
            member = scheme_of(func, scheme.family)
            if member is None:  # not a convolution: an element-wise function gets the default CPU schedule
                new = schedule_elementwise(func.with_attr("global_symbol", gv.name_hint))
                if new is not None:
                    mod[gv] = new
                continue
            new = schedule_blocked(func.with_attr("global_symbol", gv.name_hint), member.intrin, member.ow_options,
                                   member.pad_per_row, member.chain, member.oc_tile)
            if new is not None:
                mod[gv] = new
        return mod

    return _pass



def schedule_passes(scheme: Scheme | None, database_dir: str | None) -> list[tvm.transform.Pass]:
    """The hand schedule first, then the tuning database: a record (a plain-loop one, or MetaSchedule's own
    VNNI tensorization, measured slower than the hand schedule) never replaces a hand-scheduled convolution."""
    db = [relax.transform.MetaScheduleApplyDatabase(database_dir)] if database_dir is not None else []
    hand = [blocked_schedule_pass(scheme)] if scheme is not None else []
    return hand + db
