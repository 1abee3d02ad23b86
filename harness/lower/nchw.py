"""The quantized graph → Relax IRModule in plain NCHW: the integer lowering every target can fall back to.

The integer module is the same computation as :mod:`laaq.quant.integer`, op for op: uint8/int8
activations, int8 weights, ``conv2d`` (grouped / depthwise too) / ``matmul`` with ``out_dtype="int32"``,
int32 bias, and requantization in int64 (multiply by a per-channel fixed-point multiplier, add half,
arithmetic right shift, clip, cast); pooling, ``add`` and ``cat`` as the reference defines them
(:mod:`harness.lower.ops`). There is no float arithmetic anywhere in it; the module's output is the
final layer's int32 accumulator, exactly what the reference returns.

Requantization constants are passed as tensors (not scalars baked into each kernel) so that layers
with the same shapes share one kernel and one tuning task.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from harness.lower.ops import const, fixed_point_sum, window_reduce
from laaq.graph import channel_view
from laaq.quant.quantizers import QNode, QuantizedGraph

_const = const


def requantize_expr(bb: relax.BlockBuilder, acc: relax.Expr, mult: np.ndarray, q: QNode,
                    residual: relax.Expr | None) -> relax.Expr:
    """``clamp((acc·M + q_res·M_res + 2^(sh−1)) >> sh, lo, hi)`` in int64, cast to the output dtype.

    ``mult`` is the per-channel multiplier already shaped to broadcast against ``acc`` (layouts differ
    between the NCHW and the blocked lowering); everything else is shared so they cannot drift apart.
    """
    terms = [(acc, mult)] + ([(residual, np.array(q.res_mult))] if residual is not None else [])
    return fixed_point_sum(bb, terms, q.shift, q.lo, q.hi, out_dtype(q))


def out_dtype(q: QNode) -> str:
    return "int8" if q.out_signed else "uint8"


def combine_expr(bb: relax.BlockBuilder, q: QNode, xs: list[relax.Expr], axis: int = 1) -> relax.Expr:
    """``add``: both inputs rescaled in one rounding; ``cat``: each rescaled alone, then concatenated on ``axis``."""
    if q.node.op == "add":
        return fixed_point_sum(bb, list(zip(xs, q.in_mults, strict=True)), q.shift, q.lo, q.hi, out_dtype(q))
    parts = [fixed_point_sum(bb, [(x, m)], q.shift, q.lo, q.hi, out_dtype(q)) for x, m in zip(xs, q.in_mults,
                                                                                               strict=True)]
    return bb.emit(relax.op.concat(parts, axis=axis))


def pool_expr(bb: relax.BlockBuilder, q: QNode, a: relax.Expr, mult_shape: tuple[int, ...]) -> relax.Expr:
    """``maxpool``: the window maximum (codes pass through); ``avgpool``: window sum, then requantized."""
    n = q.node
    kind = "max" if n.op == "maxpool" else "sum"
    s = bb.emit_te(window_reduce, a, n.kernel, n.stride, n.padding, kind, primfunc_name_hint=f"pool_{kind}")
    if kind == "max":
        return s
    return requantize_expr(bb, s, q.mult.reshape(mult_shape), q, None)


def _requant(bb: relax.BlockBuilder, acc: relax.Expr, q: QNode, ndim: int,
             residual: relax.Expr | None) -> relax.Expr:
    return requantize_expr(bb, acc, q.mult.reshape((1, -1) + (1,) * (ndim - 2)), q, residual)


def lower_integer(qg: QuantizedGraph, batch: int) -> tvm.IRModule:
    """The quantized graph as a Relax module: ``main(x: uint8[batch, C, H, W]) -> int32[batch, classes]``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, *qg.graph.input_shape), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            env: dict[str, relax.Expr] = {"input": x}
            for n in qg.graph.nodes:
                q = qg.qnodes[n.name]
                a = env[n.inputs[0]]
                if n.op == "flatten":
                    env[n.name] = bb.emit(relax.op.reshape(a, (batch, -1)))
                    continue
                if n.op == "gap":
                    s = bb.emit(relax.op.sum(relax.op.astype(a, "int32"), axis=[2, 3]))
                    env[n.name] = _requant(bb, s, q, 2, None)
                    continue
                if n.op in ("maxpool", "avgpool"):
                    env[n.name] = pool_expr(bb, q, a, (1,) * 4)
                    continue
                if n.op in ("add", "cat"):
                    env[n.name] = combine_expr(bb, q, [env[i] for i in n.inputs])
                    continue
                w = _const(q.w_q)
                if n.op == "conv":
                    acc = bb.emit(relax.op.nn.conv2d(a, w, strides=n.stride, padding=n.padding, groups=n.groups,
                                                     out_dtype="int32"))
                    bshape = (1, -1, 1, 1)
                else:
                    acc = bb.emit(relax.op.matmul(a, relax.op.permute_dims(w), out_dtype="int32"))
                    bshape = (1, -1)
                acc = bb.emit(relax.op.add(acc, _const(channel_view(q.b_q.astype(np.int32), len(bshape)))))
                if q.final:
                    env[n.name] = acc
                    continue
                res = env[n.residual] if n.residual else None
                env[n.name] = _requant(bb, acc, q, len(bshape), res)
            out = bb.emit_output(env[qg.graph.output])
        bb.emit_func_output(out)
    return bb.get()
