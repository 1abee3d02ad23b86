"""A default CPU schedule for the element-wise functions around the integer kernels.

Why: Relax's CPU pipeline leaves functions it fused but nobody scheduled as written — one serial loop
nest per operator, each writing a full intermediate buffer. Most element-wise work is inlined into a
convolution's epilogue by the hand schedule, but what stands alone (the bias + int64 requantization
after a weight-streaming dense, a residual add, the flatten of a blocked activation) ran that way: a
4096-wide dense's requantization cost more than the dense itself. Here every block but the last is
inlined, the remaining loops are fused, vectorized, and parallel when large. Pure data movement, no
arithmetic changes: outputs stay bit-exact (``tests/test_gemv.py``, ``tests/test_fast_int8.py``).
"""

from __future__ import annotations

import tvm

PARALLEL_FROM = 1 << 16  # elements: below this a parallel launch costs more than it saves


def _spatial(block) -> bool:
    return all(int(v.iter_type) == 0 for v in block.iter_vars)  # DataPar only: no reduction


def schedule_elementwise(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """Inline, fuse, vectorize (and parallelize large) a function of spatial blocks only; None if it is not one
    or any step does not apply (the function is then left as it was)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - no root block (hand-written)
        return None
    if not blocks or not all(_spatial(sch.get(b)) for b in blocks):
        return None
    try:
        for b in blocks[:-1]:
            sch.compute_inline(b)
        loops = sch.get_loops(blocks[-1])
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = int(sch.get(fused).extent)
        lanes = next((f for f in (16, 8, 4) if extent % f == 0 and extent >= f), 0)
        if extent >= PARALLEL_FROM and lanes:
            outer, inner = sch.split(fused, [None, 1024 * lanes if extent % (1024 * lanes) == 0 else lanes])
            sch.parallel(outer)
            fused = inner
        if lanes:
            _, vec = sch.split(fused, [None, lanes])
            sch.vectorize(vec)
    except Exception:  # noqa: BLE001 - a block that cannot be inlined (several outputs, opaque access)
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
