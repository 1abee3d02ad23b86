"""The fake-quant "twin": a differentiable torch model whose forward pass is bit-exact with the
integer reference, used to craft white-box attacks against exactly the model we deploy.

Each activation is carried as a pair (integer codes, real value). The integer codes are computed
exactly (float64 convolutions of integer-valued tensors are exact far beyond our accumulator range;
requantization runs in int64). The real value is ``codes · scale`` in the forward pass, but its
gradient is that of the float layer with quantized weights, clipped where the output saturates —
the straight-through estimator. So attacks see the true quantized decision function and a useful
gradient, and the logits the twin returns equal the deployed model's to the last bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from laaq.graph import activate
from laaq.quant.quantizers import INPUT_SCALE, QNode, QuantizedGraph, quantize_input


def _requant_torch(acc: torch.Tensor, q: QNode, residual: torch.Tensor | None) -> torch.Tensor:
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    t = acc * torch.as_tensor(q.mult, dtype=torch.int64).reshape(shape)
    if residual is not None:
        t = t + residual * q.res_mult
    t = (t + (1 << (q.shift - 1))) >> q.shift
    return torch.clamp(t, q.lo, q.hi)


def exact_conv(x: torch.Tensor, w: torch.Tensor, stride: int, pad: int, groups: int) -> torch.Tensor:
    """Convolution of integer-valued float64 tensors, exact (integers < 2^53).

    Grouped / depthwise convs are summed tap by tap (one small einsum per kernel position) instead of
    ``F.conv2d``: PyTorch has no fast float64 depthwise kernel (measured 20–60× slower than float32), and
    float32 is not an option for exactness. Dense convs keep ``F.conv2d``, fast in float64.
    """
    if groups == 1:
        return F.conv2d(x, w, stride=stride, padding=pad)
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    xp = F.pad(x, (pad, pad, pad, pad)).reshape(n, groups, cg, h + 2 * pad, wd + 2 * pad)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = torch.einsum("ngcyx,goc->ngoyx", xp[..., i:i + stride * oh:stride, j:j + stride * ow:stride],
                               wg[..., i, j])
            out = tap if out is None else out + tap
    return out.reshape(n, o, oh, ow)


def _rescale_torch(codes: list[torch.Tensor], q: QNode) -> torch.Tensor:
    """``add``: ``clamp((Σ q_i·M_i + half) >> sh)``; ``cat``: each input rescaled alone, then concatenated."""
    half = 1 << (q.shift - 1)
    if q.node.op == "add":
        t = codes[0] * int(q.in_mults[0]) + codes[1] * int(q.in_mults[1])
        return torch.clamp((t + half) >> q.shift, q.lo, q.hi)
    parts = [torch.clamp((c * int(m) + half) >> q.shift, q.lo, q.hi) for c, m in zip(codes, q.in_mults, strict=True)]
    return torch.cat(parts, dim=1)


class Twin(torch.nn.Module):
    """Differentiable, bit-exact stand-in for the deployed integer model (eval only)."""

    def __init__(self, qg: QuantizedGraph) -> None:
        super().__init__()
        self.qg = qg
        self._w_int: dict[str, torch.Tensor] = {}
        self._w_real: dict[str, torch.Tensor] = {}
        self._b_real: dict[str, torch.Tensor] = {}
        for name, q in qg.qnodes.items():
            if q.w_q is None:
                continue
            shape = (-1,) + (1,) * (q.w_q.ndim - 1)
            self._w_int[name] = torch.as_tensor(q.w_q.astype(np.float64))
            self._w_real[name] = torch.as_tensor((q.w_q * q.w_scale.reshape(shape)).astype(np.float32))
            self._b_real[name] = torch.as_tensor((q.b_q * q.s_in * q.w_scale).astype(np.float32))

    def forward_int(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (real-valued logits with STE gradient, exact int64 final accumulator)."""
        codes = quantize_input(x).to(torch.int64)
        real = x + (codes.float() * INPUT_SCALE - x).detach()
        env: dict[str, tuple[torch.Tensor, torch.Tensor]] = {"input": (codes, real)}
        acc_out = codes
        for n in self.qg.graph.nodes:
            q = self.qg.qnodes[n.name]
            c_in, r_in = env[n.inputs[0]]
            res = env[n.residual] if n.residual else None
            if n.op == "flatten":
                env[n.name] = (c_in.flatten(1), r_in.flatten(1))
                continue
            if n.op == "maxpool":  # codes and scale pass through; padding (−∞) never wins the max
                c_out = F.max_pool2d(c_in.double(), n.kernel, n.stride, n.padding).to(torch.int64)
                env[n.name] = (c_out, F.max_pool2d(r_in, n.kernel, n.stride, n.padding))
                continue
            if n.op in ("gap", "avgpool"):
                if n.op == "gap":
                    acc, approx = c_in.sum(dim=(2, 3)), r_in.mean(dim=(2, 3))
                else:  # window sums of integers: exact in float64 (divisor 1)
                    acc = torch.round(F.avg_pool2d(c_in.double(), n.kernel, n.stride, n.padding,
                                                   divisor_override=1)).to(torch.int64)
                    approx = F.avg_pool2d(r_in, n.kernel, n.stride, n.padding)
                c_out = _requant_torch(acc, q, None)
            elif n.op in ("add", "cat"):
                ins = [env[i] for i in n.inputs]
                c_out = _rescale_torch([c for c, _ in ins], q)
                approx = ins[0][1] + ins[1][1] if n.op == "add" else torch.cat([r for _, r in ins], dim=1)
            else:
                if n.op == "conv":
                    acc = exact_conv(c_in.double(), self._w_int[n.name], n.stride, n.padding, n.groups)
                    approx = F.conv2d(r_in, self._w_real[n.name], self._b_real[n.name], stride=n.stride,
                                      padding=n.padding, groups=n.groups)
                else:
                    acc = F.linear(c_in.double(), self._w_int[n.name])
                    approx = F.linear(r_in, self._w_real[n.name], self._b_real[n.name])
                shape = (1, -1) + (1,) * (acc.ndim - 2)
                acc = torch.round(acc).to(torch.int64) + torch.as_tensor(q.b_q, dtype=torch.int64).reshape(shape)
                if q.final:
                    exact = (acc.double() * torch.as_tensor(q.s_in * q.w_scale).reshape(shape)).float()
                    logits = approx + (exact - approx).detach()
                    return logits, acc
                if res is not None:
                    approx = approx + res[1]
                c_out = _requant_torch(acc, q, res[0] if res is not None else None)
            approx = activate(n, approx)
            approx = torch.clamp(approx, q.lo * q.s_out, q.hi * q.s_out)
            real_out = approx + (c_out.float() * q.s_out - approx).detach()
            env[n.name] = (c_out, real_out)
            acc_out = c_out
        raise AssertionError(f"graph ended without a final weighted layer (last codes {acc_out.shape})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_int(x)[0]
