"""The float model → Relax IRModule: fp32 through TVM's own PyTorch frontend, and its fp16 version.

fp16 is a lowering, not a backend matter: the same module compiles for any target whose backend
handles half precision (today the CUDA targets).
"""

from __future__ import annotations

import torch
import tvm
from tvm import relax

from harness.backend.fold import fold_constant_calls


def lower_float(model: torch.nn.Module, input_shape: tuple[int, int, int], batch: int) -> tvm.IRModule:
    """The float model through TVM's own PyTorch frontend (torch.export → Relax), weights as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    model = model.eval()
    example = torch.zeros((batch, *input_shape))
    with torch.no_grad():
        ep = torch.export.export(model, (example,))
    mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    return mod


def lower_float16(model, input_shape: tuple[int, int, int], batch: int) -> tvm.IRModule:
    """The float model in half precision: fp16 weights and activations (batch norm decomposed into
    fp16 element-wise ops), conv/matmul accumulating in fp32 (``ToMixedPrecision(out_dtype="float32")``),
    fp32 input and output so the harness feeds and compares it exactly like fp32. Weight casts are
    folded into fp16 constants with numpy (TVM's FoldConstant builds a CPU kernel per constant: slow)."""
    mod = lower_float(model, input_shape, batch)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
    return _fold_constant_casts(mod)


def _fold_constant_casts(mod: tvm.IRModule) -> tvm.IRModule:
    return fold_constant_calls(mod, "relax.astype", lambda call, value: value.astype(str(call.attrs.dtype)))
