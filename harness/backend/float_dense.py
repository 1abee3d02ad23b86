"""Float32 dense layers whose width is not a multiple of the vector lanes: constant weights padded with zero
columns, the output sliced back.

Why: the fp32 matmul schedule (:func:`harness.backend.float_schedule.schedule_matmul`) vectorizes the output
columns in blocks that divide the width; a 100-wide layer (SmallCNN's fc1) got 4-wide vectors — a quarter of
an AVX-512 register — and took 186 of SmallCNN's ~310 µs at batch 64. Padded to 112 columns it runs in full
16-lane vectors; the 12 zero columns are computed and dropped (``R.strided_slice``, fused into the matmul's
epilogue). Exact: a zero column changes no other column's sum.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


def _constant_weight(mut: relax.PyExprMutator, arg: relax.Expr) -> np.ndarray | None:
    """The ``[K, N]`` value of a matmul's second operand when it is a constant or a transposed constant."""
    if isinstance(arg, relax.Var):
        bound = mut.lookup_binding(arg)
        arg = arg if bound is None else bound
    if isinstance(arg, tvm.ir.expr.Constant):
        value = arg.value.numpy()
        return value if value.ndim == 2 else None
    if isinstance(arg, relax.Call) and getattr(arg.op, "name", "") == "relax.permute_dims" \
            and isinstance(arg.args[0], tvm.ir.expr.Constant):
        value = arg.args[0].value.numpy()
        axes = arg.attrs.axes
        if value.ndim == 2 and (axes is None or [int(a) for a in axes] == [1, 0]):
            return value.T
    return None


def pad_dense_pass(lanes: int) -> tvm.transform.Pass:
    """Relax module pass: ``R.matmul(x, W)`` with a constant float32 ``W`` of ``N % lanes != 0`` columns (and
    ``N > lanes``: a narrow classifier head is left alone) → ``strided_slice(matmul(x, W‖0), N)``."""
    matmul = tvm.ir.Op.get("relax.matmul")

    @relax.expr_functor.mutator
    class Pad(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor naming
            call = super().visit_call_(call)
            if call.op != matmul or len(call.args) != 2:
                return call
            w = _constant_weight(self, call.args[1])
            if w is None or w.dtype != np.float32 or w.shape[1] % lanes == 0 or w.shape[1] < lanes:
                return call
            n = w.shape[1]
            padded = np.zeros((w.shape[0], -(-n // lanes) * lanes), np.float32)
            padded[:, :n] = w
            wide = self.builder_.emit(relax.op.matmul(call.args[0], relax.const(padded), out_dtype="float32"))
            return relax.op.strided_slice(wide, axes=[-1], begin=[0], end=[n])

    @tvm.transform.module_pass(opt_level=0, name="LaaqPadFloatDense")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
        for gv, f in mod.functions.items():
            if isinstance(f, relax.Function):
                out[gv] = Pad(mod).visit_expr(f)
        return relax.transform.DeadCodeElimination()(out)

    return _pass
