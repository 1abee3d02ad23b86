"""The blocked lowering's ops beyond the tensorized convolution: grouped / depthwise convs, pooling,
``add`` and ``cat`` on ``[N, C/cb, H, W, cb]`` activations, bit-exact with :mod:`laaq.quant.integer`.

Why plain loops for grouped convs: every scheme's intrinsic sums ``k`` *input channels* into each of ``ob``
*output channels*; a depthwise conv has one input channel per output channel, so the tile would be
mostly zeros (4× to 16× the multiplies) and a grouped one with a group smaller than the block would
need per-group packing. They are written as one ``te.compute`` over the blocked layout instead (int32
accumulation of true values, exact), which the CPU pipeline compiles as plain loops (and MetaSchedule
may tune); the dense convs around them keep their tensorized schedule and their layout, so nothing is
converted back and forth (docs/performance.md).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from harness.lower.nchw import combine_expr, pool_expr
from harness.lower.ops import const
from laaq.quant.quantizers import QNode


def _ceil(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def grouped_conv(data: te.Tensor, kernel: te.Tensor, stride: int, pad: int, groups: int, out_ch: int,
                 offset: int, ob: int) -> te.Tensor:
    """``[N, C/cb, H, W, cb]`` stored activations (true value = stored − ``offset``) ⊛ int8 ``[Op, C/g, kh, kw]``
    (output channels zero-padded to ``Op``, a multiple of ``ob``) → int32 ``[N, Op/ob, OH, OW, ob]``.
    Zero padding is of true values; padded output channels have zero weights and come out 0."""
    n, _, h, w, cb = (int(s) for s in data.shape)
    op_, cg, kh, kw = (int(s) for s in kernel.shape)
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    per_group = out_ch // groups
    rc, ry, rx = te.reduce_axis((0, cg), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def body(i, oo, y, x, oi):
        o = oo * ob + oi
        c = tvm.tirx.min(o // per_group, groups - 1) * cg + rc
        iy, ix = y * stride + ry - pad, x * stride + rx - pad
        inside = tvm.tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        v = tvm.tirx.if_then_else(inside, data[i, c // cb, iy, ix, c % cb].astype("int32") - offset, 0)
        return te.sum(v * kernel[o, rc, ry, rx].astype("int32"), axis=[rc, ry, rx])

    return te.compute((n, op_ // ob, oh, ow, ob), body, name="grouped_conv")


def grouped_acc(bb: relax.BlockBuilder, a: relax.Expr, offset: int, q: QNode, ob: int
                ) -> tuple[relax.Expr, tuple[int, ...]]:
    """A grouped / depthwise conv's int32 accumulator + bias on a blocked input, and the shape per-channel
    constants broadcast with."""
    n = q.node
    o = q.w_q.shape[0]
    op_ = _ceil(o, ob)
    kernel = np.zeros((op_, *q.w_q.shape[1:]), dtype=np.int8)
    kernel[:o] = q.w_q
    acc = bb.emit_te(grouped_conv, a, const(kernel), n.stride, n.padding, n.groups, o, offset, ob,
                     primfunc_name_hint="grouped_conv_nchwc")
    return bb.emit(relax.op.add(acc, const(blocked_bias(q.b_q, op_, ob)))), (1, op_ // ob, 1, 1, ob)


def blocked_bias(b: np.ndarray, op: int, ob: int) -> np.ndarray:
    """An int32 bias ``[O]`` (or a bias map ``[O, OH, OW]``, :mod:`laaq.graph`) → ``[1, Op/ob, 1|OH, 1|OW, ob]``,
    the blocked accumulator's layout; channels past ``O`` zero."""
    spatial = tuple(b.shape[1:]) or (1, 1)
    full = np.zeros((op, *spatial), dtype=np.int32)
    full[: len(b)] = b.reshape(len(b), *spatial)
    return np.ascontiguousarray(full.reshape(op // ob, ob, *spatial).transpose(0, 2, 3, 1)[None])


def to_nchwc(bb: relax.BlockBuilder, t: relax.Expr, ob: int) -> relax.Expr:
    """NCHW → ``[N, Cp/ob, H, W, ob]``, channels beyond ``C`` zero (as every blocked activation's)."""
    n, c, h, w = (int(s) for s in t.ty.shape)
    cp = _ceil(c, ob)
    if cp != c:
        t = bb.emit(relax.op.nn.pad(t, [0, 0, 0, cp - c, 0, 0, 0, 0]))
    t = bb.emit(relax.op.reshape(t, (n, cp // ob, ob, h, w)))
    return bb.emit(relax.op.permute_dims(t, [0, 1, 3, 4, 2]))


def pool_blocked(bb: relax.BlockBuilder, q: QNode, a: relax.Expr) -> relax.Expr:
    """Max / average pool on the blocked activation itself (windows on axes 2, 3 as in NCHW)."""
    return pool_expr(bb, q, a, (1,) * 5)


def add_blocked(bb: relax.BlockBuilder, q: QNode, xs: list[relax.Expr]) -> relax.Expr:
    """Element-wise on two activations of the same layout (padded channels: 0 + 0 → 0)."""
    return combine_expr(bb, q, xs)


def cat_blocked(bb: relax.BlockBuilder, q: QNode, nchw: list[relax.Expr], ob: int) -> relax.Expr:
    """Concatenation along the true channels (inputs given in NCHW), re-blocked by ``ob``."""
    return to_nchwc(bb, combine_expr(bb, q, nchw), ob)
