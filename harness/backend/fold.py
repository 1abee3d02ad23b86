"""Fold one Relax op applied to a constant into a new constant, with numpy.

Why: TVM's ``FoldConstant`` builds and runs a CPU kernel per constant — slow for a model's worth of weight
casts (fp16) or re-layouts (the fp32 NCHWc schedule). Both only need the constant's values transformed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax


def fold_constant_calls(mod: tvm.IRModule, op_name: str,
                        fold: Callable[[relax.Call, np.ndarray], np.ndarray | None]) -> tvm.IRModule:
    """Every ``op_name`` call whose first argument is a constant becomes ``fold(call, value)`` as a constant
    (left as it is where ``fold`` returns None); Relax functions only, the module otherwise unchanged."""
    op = tvm.ir.Op.get(op_name)

    @relax.expr_functor.mutator
    class Fold(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor naming
            call = super().visit_call_(call)
            if call.op == op and isinstance(call.args[0], tvm.ir.expr.Constant):
                out = fold(call, call.args[0].value.numpy())
                if out is not None:
                    return relax.const(tvm.runtime.tensor(out))
            return call

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, f in mod.functions.items():
        if isinstance(f, relax.Function):
            out[gv] = Fold().visit_expr(f)
    return out
