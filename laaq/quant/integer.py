"""Integer-only reference executor (numpy, int64 arithmetic, no floating point between layers).

This is the ground truth the fake-quant twin and every compiled artefact are compared against,
bit for bit. It is written independently of torch on purpose: a shared bug in a torch helper would
otherwise make the twin and the "reference" agree while both are wrong.
"""

from __future__ import annotations

import numpy as np

from laaq.graph import channel_view
from laaq.quant.quantizers import QNode, QuantizedGraph


def _im2col(x: np.ndarray, kh: int, kw: int, stride: int, pad: int) -> tuple[np.ndarray, int, int]:
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (w + 2 * pad - kw) // stride + 1
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    return cols.reshape(n, c * kh * kw, oh * ow), oh, ow


def conv2d_int(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int = 1) -> np.ndarray:
    """Exact integer convolution (grouped when ``groups`` > 1): int64 accumulate."""
    o, _, kh, kw = w.shape
    cols, oh, ow = _im2col(x.astype(np.int64), kh, kw, stride, pad)  # rows ordered (channel, kh, kw)
    n = x.shape[0]
    cols = cols.reshape(n, groups, -1, oh * ow)
    wg = w.reshape(groups, o // groups, -1).astype(np.int64)
    acc = np.einsum("gok,ngkp->ngop", wg, cols, optimize=True)
    return acc.reshape(n, o, oh, ow)


def _windows(x: np.ndarray, k: int, stride: int, pad: int, fill: int) -> np.ndarray:
    """``[N, C, k·k, OH, OW]``: every k×k window of ``x`` (borders padded with ``fill``)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.empty((n, c, k * k, oh, ow), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            out[:, :, i * k + j] = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    return out


def pool_int(x: np.ndarray, kind: str, k: int, stride: int, pad: int) -> np.ndarray:
    """``max``: the largest code of each window (padding holds −2^62, so it never wins, as torch's −∞);
    ``sum``: the int64 sum of each window with zero padding (an average pool's numerator)."""
    if kind == "max":
        return _windows(x.astype(np.int64), k, stride, pad, -(2**62)).max(axis=2)
    return _windows(x.astype(np.int64), k, stride, pad, 0).sum(axis=2)


def rescale(xs: list[np.ndarray], mults: np.ndarray, shift: int, lo: int, hi: int) -> list[np.ndarray]:
    """Each input to the output's scale on its own: ``clamp((q_i·M_i + 2^(sh−1)) >> sh, lo, hi)`` (concatenation)."""
    half = np.int64(1) << np.int64(shift - 1)
    return [np.clip((x.astype(np.int64) * np.int64(m) + half) >> np.int64(shift), lo, hi)
            for x, m in zip(xs, mults, strict=True)]


def add_int(a: np.ndarray, b: np.ndarray, mults: np.ndarray, shift: int, lo: int, hi: int) -> np.ndarray:
    """``clamp((q_a·M_a + q_b·M_b + 2^(sh−1)) >> sh, lo, hi)``: both inputs rescaled in one rounding."""
    t = a.astype(np.int64) * np.int64(mults[0]) + b.astype(np.int64) * np.int64(mults[1])
    return np.clip((t + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift), lo, hi)


def requantize(acc: np.ndarray, mult: np.ndarray, shift: int, lo: int, hi: int,
               residual: np.ndarray | None = None, res_mult: int = 0) -> np.ndarray:
    """``clamp((acc·M + q_res·M_res + 2^(shift−1)) >> shift, lo, hi)`` in int64 (round half up)."""
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    t = acc.astype(np.int64) * mult.astype(np.int64).reshape(shape)
    if residual is not None:
        t = t + residual.astype(np.int64) * np.int64(res_mult)
    t = (t + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift)
    return np.clip(t, lo, hi)


def _check_int32(acc: np.ndarray, name: str) -> None:
    if acc.size and (acc.max() > 2**31 - 1 or acc.min() < -(2**31)):
        raise OverflowError(f"int32 accumulator overflow in layer {name!r}")


def run_node(q: QNode, xs: list[np.ndarray], residual: np.ndarray | None) -> np.ndarray:
    n = q.node
    x = xs[0]
    if n.op == "flatten":
        return x.reshape(x.shape[0], -1)
    if n.op == "maxpool":
        return pool_int(x, "max", n.kernel, n.stride, n.padding)
    if n.op == "gap":
        s = x.astype(np.int64).sum(axis=(2, 3))
        return requantize(s, q.mult, q.shift, q.lo, q.hi)
    if n.op == "avgpool":
        return requantize(pool_int(x, "sum", n.kernel, n.stride, n.padding), q.mult, q.shift, q.lo, q.hi)
    if n.op == "add":
        return add_int(xs[0], xs[1], q.in_mults, q.shift, q.lo, q.hi)
    if n.op == "cat":
        return np.concatenate(rescale(xs, q.in_mults, q.shift, q.lo, q.hi), axis=1)
    if n.op == "conv":
        acc = conv2d_int(x, q.w_q, n.stride, n.padding, n.groups)
    else:
        acc = x.astype(np.int64) @ q.w_q.astype(np.int64).T
    acc = acc + channel_view(q.b_q.astype(np.int64), acc.ndim)
    _check_int32(acc, n.name)
    if q.final:
        return acc.astype(np.int32)
    return requantize(acc, q.mult, q.shift, q.lo, q.hi, residual, q.res_mult)


def run_integer(qg: QuantizedGraph, x_q: np.ndarray, keep_all: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """Run the integer graph on uint8 inputs; returns the final int32 accumulator ("int logits")."""
    if x_q.dtype != np.uint8:
        raise TypeError(f"integer reference takes uint8 inputs, got {x_q.dtype}")
    env: dict[str, np.ndarray] = {"input": x_q.astype(np.int64)}
    for n in qg.graph.nodes:
        q = qg.qnodes[n.name]
        res = env[n.residual] if n.residual else None
        env[n.name] = run_node(q, [env[i] for i in n.inputs], res)
    out = env[qg.graph.output]
    if keep_all:
        return env
    return out.astype(np.int32)


def logits_from_int(qg: QuantizedGraph, acc: np.ndarray) -> np.ndarray:
    """Dequantize the final accumulator (per-class scale) — the only float step, at the very end."""
    return acc.astype(np.float64) * qg.logit_scale().reshape(1, -1)
