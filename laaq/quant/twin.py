"""The fake-quant "twin": a differentiable torch model whose forward pass is bit-exact with the
integer reference, used to craft white-box attacks against exactly the model we deploy.

Each activation is carried as a pair (integer codes, real value). The integer codes are computed
exactly (requantization in int64; the integer convolutions by :class:`ExactLinear`, in float32 where a
bound proves every partial sum an exact float32 integer, else in float64). The real value is
``codes · scale`` in the forward pass, but its gradient is that of the float layer with quantized
weights, clipped where the output saturates — the straight-through estimator. So attacks see the true
quantized decision function and a useful gradient, and the logits the twin returns equal
the deployed model's to the last bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from laaq.graph import Graph, activate, channel_view, infer_shapes
from laaq.quant.quantizers import INPUT_SCALE, QNode, QuantizedGraph, quantize_input


def _requant_torch(acc: torch.Tensor, q: QNode, residual: torch.Tensor | None) -> torch.Tensor:
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    t = acc * torch.as_tensor(q.mult, dtype=torch.int64, device=acc.device).reshape(shape)
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


F32_EXACT = 1 << 24  # every integer of magnitude <= 2^24 is a float32; sums that stay below it are exact
SPLIT_SHIFT = 4  # w = hi·2^4 + lo with |lo| <= 8: each half's partial sums are ~16x smaller than w's


class ExactLinear:
    """The exact integer accumulator of one conv or dense layer, as cheap as exactness allows.

    Why: the twin is the attacks' inner loop (APGD-T alone is ~2,000 forward+backward passes per image),
    and float64 convolutions cost 3-10x their float32 twins on a CPU. A float32 *direct* convolution or
    GEMM of integer-valued operands is exact when no partial sum can exceed 2^24 in magnitude, whatever
    the summation order: the bound ``max|x| · max_o Σ|w_o|`` proves it. Where the bound fails, the weights
    are split into ``hi·16 + lo`` (two float32 passes, each ~16x below the bound, recombined in int64);
    where that fails too, float64 (exact to 2^53). Only on the CPU: a GPU's convolution may pick Winograd,
    FFT or TF32, whose float32 results are not exact, so it keeps float64 (whose rounding error, far below
    0.5 at our accumulator sizes, ``torch.round`` removes).
    """

    def __init__(self, w_int: np.ndarray, op: str, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        self.op, self.stride, self.pad, self.groups = op, stride, pad, groups
        w = w_int.astype(np.int64)
        self.abs_sum = int(np.abs(w).reshape(w.shape[0], -1).sum(1).max()) if w.size else 0
        hi = np.round(w / (1 << SPLIT_SHIFT)).astype(np.int64)
        lo = w - hi * (1 << SPLIT_SHIFT)
        self.split_sum = max(int(np.abs(p).reshape(p.shape[0], -1).sum(1).max()) for p in (hi, lo)) if w.size else 0
        self.w64 = torch.as_tensor(w.astype(np.float64))
        self.w32 = torch.as_tensor(w.astype(np.float32))
        self.hi32, self.lo32 = torch.as_tensor(hi.astype(np.float32)), torch.as_tensor(lo.astype(np.float32))

    def to(self, device: torch.device | str) -> ExactLinear:
        """Moves the weights (float64 only off the CPU: the float32 paths are CPU-only, see the class doc)."""
        self.w64 = self.w64.to(device)
        if torch.device(device).type == "cpu":
            self.w32, self.hi32, self.lo32 = (t.to(device) for t in (self.w32, self.hi32, self.lo32))
        return self

    def _apply(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.op == "conv":
            if x.dtype == torch.float64:
                return exact_conv(x, w, self.stride, self.pad, self.groups)
            return F.conv2d(x, w, stride=self.stride, padding=self.pad, groups=self.groups)
        return F.linear(x, w)

    def __call__(self, codes: torch.Tensor, x_max: int) -> torch.Tensor:
        """int64 codes, each of magnitude <= ``x_max`` -> the exact int64 accumulator (no bias)."""
        if codes.device.type == "cpu":
            if x_max * self.abs_sum < F32_EXACT:
                return self._apply(codes.float(), self.w32).to(torch.int64)
            if x_max * self.split_sum < F32_EXACT:
                x = codes.float()
                return ((self._apply(x, self.hi32).to(torch.int64) << SPLIT_SHIFT)
                        + self._apply(x, self.lo32).to(torch.int64))
        return torch.round(self._apply(codes.double(), self.w64)).to(torch.int64)


def _exact_float(codes: torch.Tensor, x_max: int, terms: int = 1) -> torch.Tensor:
    """Integer codes (magnitude <= ``x_max``) as floats for an op that sums at most ``terms`` of them (max
    pool: 1): float32 where every such sum stays an exact float32 integer, float64 otherwise."""
    return codes.float() if x_max * terms < F32_EXACT else codes.double()


def _rescale_torch(codes: list[torch.Tensor], q: QNode) -> torch.Tensor:
    """``add``: ``clamp((Σ q_i·M_i + half) >> sh)``; ``cat``: each input rescaled alone, then concatenated."""
    half = 1 << (q.shift - 1)
    if q.node.op == "add":
        t = codes[0] * int(q.in_mults[0]) + codes[1] * int(q.in_mults[1])
        return torch.clamp((t + half) >> q.shift, q.lo, q.hi)
    parts = [torch.clamp((c * int(m) + half) >> q.shift, q.lo, q.hi) for c, m in zip(codes, q.in_mults, strict=True)]
    return torch.cat(parts, dim=1)


class _LayerSTE(torch.autograd.Function):
    """A weighted layer's real output for the straight-through path: forward, its exact value (the integer
    accumulator times its scales, already computed); backward, the gradient of the float layer with the
    quantized weights w.r.t. its input — what ``F.conv2d(r_in, w_real, b_real)`` would give, without
    computing that convolution a second time in the forward pass (the twin's inner-loop cost)."""

    @staticmethod
    def forward(ctx, r_in, value, w, op, stride, pad, groups):  # noqa: ANN001, ANN205 - autograd's signature
        ctx.save_for_backward(w)
        ctx.meta = (op, stride, pad, groups, r_in.shape)
        return value

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (w,) = ctx.saved_tensors
        op, stride, pad, groups, shape = ctx.meta
        if op == "conv":
            gi = torch.nn.grad.conv2d_input(shape, w, g, stride=stride, padding=pad, groups=groups)
        else:
            gi = g @ w
        return gi, None, None, None, None, None, None


class _Straight(torch.autograd.Function):
    """``approx + (exact - approx).detach()`` in one step: forward ``exact``, gradient straight to ``approx``."""

    @staticmethod
    def forward(ctx, approx, exact):  # noqa: ANN001, ANN205 - autograd's signature
        return exact

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return g, None


CHUNK_ELEMENTS = 1 << 20  # activation elements per chunk (int64: 8 MiB, about what stays in cache)


def chunk_size(graph: Graph) -> int:
    """Images per twin call: enough that the largest activation of a chunk holds ~2^20 elements.

    Why: the twin's exact path is a chain of elementwise int64 passes (requantization) that are bound by
    memory traffic; at the attacks' batch of 500 each 28×28 activation is ~50 MB and every pass streams from
    RAM. In cache-sized chunks the same work ran 2.0× (forward+backward) to 2.2× (exact path) faster on
    VGG8/MNIST (2-core EPYC Zen 4; ``benchmarks/twin_chunk.py`` measures it)."""
    shapes = infer_shapes(graph)
    largest = max(int(np.prod(s)) for s in shapes.values()) if shapes else 1
    return max(8, CHUNK_ELEMENTS // max(1, largest))


class Twin(torch.nn.Module):
    """Differentiable, bit-exact stand-in for the deployed integer model (eval only)."""

    def __init__(self, qg: QuantizedGraph) -> None:
        super().__init__()
        self.qg = qg
        self._exact: dict[str, ExactLinear] = {}
        # every activation code lies in its node's [lo, hi] (8-bit: within [-128, 255]), the input's in [0, 255]:
        # a static bound for the exactness proofs, instead of a max() over each tensor on every call
        self._code_max = max([255] + [max(abs(q.lo), abs(q.hi)) for q in qg.qnodes.values()])
        self.chunk = chunk_size(qg.graph)
        self._w_real: dict[str, torch.Tensor] = {}
        self._scale: dict[str, torch.Tensor] = {}  # per output channel: accumulator -> real value
        for name, q in qg.qnodes.items():
            if q.w_q is None:
                continue
            shape = (-1,) + (1,) * (q.w_q.ndim - 1)
            n = q.node
            self._exact[name] = ExactLinear(q.w_q, n.op, n.stride, n.padding, n.groups) if n.op == "conv" \
                else ExactLinear(q.w_q, n.op)
            self._w_real[name] = torch.as_tensor((q.w_q * q.w_scale.reshape(shape)).astype(np.float32))
            self._scale[name] = torch.as_tensor((q.s_in * q.w_scale).astype(np.float32))

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        """``.to(device)`` / ``.cuda()`` move the weight dictionaries too (they are not registered buffers)."""
        super()._apply(fn, recurse)
        for d in (self._w_real, self._scale):
            for k, t in d.items():
                d[k] = fn(t)
        device = fn(torch.zeros(0)).device
        for e in self._exact.values():
            e.to(device)
        return self

    def forward_int(self, x: torch.Tensor, grad_path: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Returns (real-valued logits with STE gradient, exact int64 final accumulator).

        ``grad_path=False`` computes the exact integer path only and returns ``(None, acc)``: what a
        black-box attack's queries need (the deployed function's outputs), at half the cost. A batch larger
        than :attr:`chunk` runs in chunks (same results: every image is computed on its own)."""
        if len(x) <= self.chunk:
            return self._forward_int(x, grad_path)
        parts = [self._forward_int(x[i:i + self.chunk], grad_path) for i in range(0, len(x), self.chunk)]
        acc = torch.cat([a for _, a in parts])
        return (torch.cat([r for r, _ in parts]) if grad_path else None), acc

    def _forward_int(self, x: torch.Tensor, grad_path: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        codes = quantize_input(x).to(torch.int64)
        real = x + (codes.float() * INPUT_SCALE - x).detach() if grad_path else None
        env: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {"input": (codes, real)}
        acc_out = codes
        for n in self.qg.graph.nodes:
            q = self.qg.qnodes[n.name]
            c_in, r_in = env[n.inputs[0]]
            res = env[n.residual] if n.residual else None
            approx = None
            if n.op == "flatten":
                env[n.name] = (c_in.flatten(1), r_in.flatten(1) if grad_path else None)
                continue
            if n.op == "maxpool":  # codes and scale pass through; padding (−∞) never wins the max
                c_out = F.max_pool2d(_exact_float(c_in, self._code_max), n.kernel, n.stride,
                                     n.padding).to(torch.int64)
                env[n.name] = (c_out, F.max_pool2d(r_in, n.kernel, n.stride, n.padding) if grad_path else None)
                continue
            if n.op in ("gap", "avgpool"):
                if n.op == "gap":
                    acc = c_in.sum(dim=(2, 3))
                    approx = r_in.mean(dim=(2, 3)) if grad_path else None
                else:  # window sums of integers: exact in float32 below 2^24, else float64 (divisor 1)
                    wide = _exact_float(c_in, self._code_max, n.kernel * n.kernel)
                    acc = torch.round(F.avg_pool2d(wide, n.kernel, n.stride, n.padding,
                                                   divisor_override=1)).to(torch.int64)
                    approx = F.avg_pool2d(r_in, n.kernel, n.stride, n.padding) if grad_path else None
                c_out = _requant_torch(acc, q, None)
            elif n.op in ("add", "cat"):
                ins = [env[i] for i in n.inputs]
                c_out = _rescale_torch([c for c, _ in ins], q)
                if grad_path:
                    approx = ins[0][1] + ins[1][1] if n.op == "add" else torch.cat([r for _, r in ins], dim=1)
            else:
                acc = self._exact[n.name](c_in, self._code_max)
                shape = (1, -1) + (1,) * (acc.ndim - 2)
                acc = acc + channel_view(torch.as_tensor(q.b_q, dtype=torch.int64, device=acc.device), acc.ndim)
                if grad_path:
                    # the float layer's value is the accumulator rescaled (no second convolution; exact in float64
                    # for the logits, float32 inside, where it only places the ReLU/clip masks); its gradient is
                    # the float layer's, through the quantized weights (_LayerSTE)
                    if q.final:
                        value = (acc.double() * torch.as_tensor(q.s_in * q.w_scale, device=acc.device)
                                 .reshape(shape)).float()
                    else:
                        value = acc.float() * self._scale[n.name].reshape(shape)
                    approx = _LayerSTE.apply(r_in, value, self._w_real[n.name], n.op, n.stride, n.padding, n.groups)
                if q.final:
                    return (approx if grad_path else None), acc
                if grad_path and res is not None:
                    approx = approx + res[1]
                c_out = _requant_torch(acc, q, res[0] if res is not None else None)
            if grad_path:
                approx = activate(n, approx)
                approx = torch.clamp(approx, q.lo * q.s_out, q.hi * q.s_out)
                real_out = _Straight.apply(approx, c_out.float() * q.s_out)
            else:
                real_out = None
            env[n.name] = (c_out, real_out)
            acc_out = c_out
        raise AssertionError(f"graph ended without a final weighted layer (last codes {acc_out.shape})")

    @torch.no_grad()
    def exact_acc(self, x: torch.Tensor) -> torch.Tensor:
        """The deployed model's exact int64 output accumulator for float images ``x`` (no gradient path)."""
        return self.forward_int(x, grad_path=False)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_int(x)[0]
