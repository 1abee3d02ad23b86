"""Integer building blocks shared by the NCHW and the blocked lowering: fixed-point sums and pooling windows.

Why shared: the integer reference (:mod:`laaq.quant.integer`) defines each op once; the two layouts differ
only in where the channel axis lives, and the pooling windows always sit on axes 2 and 3 (``[N, C, H, W]``
and ``[N, C/cb, H, W, cb]`` alike), so one definition serves both and they cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te


def const(a: np.ndarray) -> relax.Constant:
    return relax.const(tvm.runtime.tensor(np.ascontiguousarray(a)))


def fixed_point_sum(bb: relax.BlockBuilder, terms: list[tuple[relax.Expr, np.ndarray]], shift: int, lo: int,
                    hi: int, out_dtype: str) -> relax.Expr:
    """``clamp((Σ_i x_i·M_i + 2^(sh−1)) >> sh, lo, hi)`` in int64, cast to ``out_dtype``.

    ``M_i`` broadcast against ``x_i`` (a per-channel vector already shaped for the layout, or a scalar):
    a layer's requantization (accumulator + residual), an ``add`` (two inputs), one input of a ``cat``.
    """
    t = None
    for x, m in terms:
        p = bb.emit(relax.op.multiply(relax.op.astype(x, "int64"), const(np.asarray(m, dtype=np.int64))))
        t = p if t is None else bb.emit(relax.op.add(t, p))
    t = bb.emit(relax.op.add(t, const(np.array(1 << (shift - 1), dtype=np.int64))))
    t = bb.emit(relax.op.right_shift(t, const(np.array(shift, dtype=np.int64))))
    t = bb.emit(relax.op.clip(t, lo, hi))
    return bb.emit(relax.op.astype(t, out_dtype))


def window_reduce(data: te.Tensor, k: int, stride: int, pad: int, kind: str) -> te.Tensor:
    """k×k windows over axes 2 and 3: ``sum`` → int32 sums (zero padding, an average pool's numerator);
    ``max`` → the largest value in the input's dtype (padding never wins: it is the int32 minimum)."""
    shape = [int(s) for s in data.shape]
    h, w = shape[2], shape[3]
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    ry, rx = te.reduce_axis((0, k), name="ry"), te.reduce_axis((0, k), name="rx")
    fill = tvm.tirx.const(0 if kind == "sum" else -(2**31), "int32")

    def value(i, y, x):
        iy, ix = y * stride + ry - pad, x * stride + rx - pad
        inside = tvm.tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        return tvm.tirx.if_then_else(inside, data[(i[0], i[1], iy, ix, *i[2:])].astype("int32"), fill)

    def body(*i):
        v = value((i[0], i[1], *i[4:]), i[2], i[3])
        return te.sum(v, axis=[ry, rx]) if kind == "sum" else te.max(v, axis=[ry, rx])

    out = te.compute((shape[0], shape[1], oh, ow, *shape[4:]), body, name=f"window_{kind}")
    if kind == "max":
        return te.compute(out.shape, lambda *i: out(*i).astype(data.dtype), name="window_max_cast")
    return out
