"""The quantized graph → Relax IRModule in plain NCHW: the integer lowering every target can fall back to.

The integer module is the same computation as :mod:`laaq.quant.integer`, op for op: uint8/int8
activations, int8 weights, ``conv2d``/``matmul`` with ``out_dtype="int32"``, int32 bias, and
requantization in int64 (multiply by a per-channel fixed-point multiplier, add half, arithmetic
right shift, clip, cast). There is no float arithmetic anywhere in it; the module's output is the
final layer's int32 accumulator, exactly what the reference returns.

Requantization constants are passed as tensors (not scalars baked into each kernel) so that layers
with the same shapes share one kernel and one tuning task.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from laaq.quant.quantizers import QNode, QuantizedGraph


def _const(a: np.ndarray) -> relax.Constant:
    return relax.const(tvm.runtime.tensor(np.ascontiguousarray(a)))


def requantize_expr(bb: relax.BlockBuilder, acc: relax.Expr, mult: np.ndarray, q: QNode,
                    residual: relax.Expr | None) -> relax.Expr:
    """``clamp((acc·M + q_res·M_res + 2^(sh−1)) >> sh, lo, hi)`` in int64, cast to the output dtype.

    ``mult`` is the per-channel multiplier already shaped to broadcast against ``acc`` (layouts differ
    between the NCHW and the blocked lowering); everything else is shared so they cannot drift apart.
    """
    t = bb.emit(relax.op.multiply(relax.op.astype(acc, "int64"), _const(mult.astype(np.int64))))
    if residual is not None:
        r = relax.op.multiply(relax.op.astype(residual, "int64"), _const(np.array(q.res_mult, dtype=np.int64)))
        t = bb.emit(relax.op.add(t, r))
    t = bb.emit(relax.op.add(t, _const(np.array(1 << (q.shift - 1), dtype=np.int64))))
    t = bb.emit(relax.op.right_shift(t, _const(np.array(q.shift, dtype=np.int64))))
    t = bb.emit(relax.op.clip(t, q.lo, q.hi))
    return bb.emit(relax.op.astype(t, "int8" if q.out_signed else "uint8"))


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
                w = _const(q.w_q)
                if n.op == "conv":
                    acc = bb.emit(relax.op.nn.conv2d(a, w, strides=n.stride, padding=n.padding, out_dtype="int32"))
                    bshape = (1, -1, 1, 1)
                else:
                    acc = bb.emit(relax.op.matmul(a, relax.op.permute_dims(w), out_dtype="int32"))
                    bshape = (1, -1)
                acc = bb.emit(relax.op.add(acc, _const(q.b_q.astype(np.int32).reshape(bshape))))
                if q.final:
                    env[n.name] = acc
                    continue
                res = env[n.residual] if n.residual else None
                env[n.name] = _requant(bb, acc, q, len(bshape), res)
            out = bb.emit_output(env[qg.graph.output])
        bb.emit_func_output(out)
    return bb.get()
