"""Exact operator (spectral) norms of weighted layers, as linear maps on their real input shape.

Why not the usual shortcuts: the spectral norm of a conv kernel reshaped to ``[O, I·kh·kw]`` is
neither an upper nor a lower bound of the convolution's norm once stride and zero padding are in
play (a stride-2 conv can be much "smaller" than its kernel matrix, a padded one differs at the
borders). The Lipschitz constant that bounds how far a perturbation travels is the largest singular
value of the actual map ``x ↦ conv2d(x, W, stride, padding)`` on the layer's input shape, so that is
what we compute: power iteration on ``AᵀA`` with ``conv2d`` as ``A`` and ``conv_transpose2d`` (with
the output padding that restores the exact input shape) as ``Aᵀ``. Dense layers use an SVD.

The same routine measures the float weights ``W``, the quantized weights ``Q(W)`` and the error
``W − Q(W)`` for any :class:`~laaq.quant.plan.LayerSetting` (see :func:`layer_norms`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from laaq.graph import Graph, Node
from laaq.quant.plan import LayerSetting
from laaq.quant.quantizers import dequantize_weight


def _out_padding(size_in: int, size_out: int, k: int, stride: int, padding: int) -> int:
    """The ``output_padding`` that makes conv_transpose2d land exactly on the conv's input size."""
    return size_in - ((size_out - 1) * stride - 2 * padding + k)


def conv_operator_norm(weight: np.ndarray | torch.Tensor, in_shape: tuple[int, int, int], stride: int = 1,
                       padding: int = 0, iters: int = 500, tol: float = 1e-7, seed: int = 0,
                       v0: torch.Tensor | None = None, groups: int = 1) -> float:
    """Largest singular value of ``x ↦ conv2d(x, weight, stride, padding, groups)`` on inputs of ``in_shape``."""
    return conv_top_singular(weight, in_shape, stride, padding, iters, tol, seed, v0, groups)[0]


def conv_top_singular(weight: np.ndarray | torch.Tensor, in_shape: tuple[int, int, int], stride: int = 1,
                      padding: int = 0, iters: int = 500, tol: float = 1e-7, seed: int = 0,
                      v0: torch.Tensor | None = None, groups: int = 1) -> tuple[float, torch.Tensor]:
    """(σ_max, top right singular vector) of the convolution as a map on inputs of ``in_shape``.

    A grouped convolution (``groups`` > 1, depthwise when every group has one channel) is a block-diagonal
    map; power iteration on the whole map with the grouped ``conv2d`` / ``conv_transpose2d`` pair gives its
    exact norm (the largest of the groups' norms) with no special case.

    Power iteration in float64 on ``AᵀA``; stops when the estimate changes by less than ``tol``
    (relative). The estimate ``‖Av‖`` for a unit ``v`` is a lower bound that converges to σ_max,
    so a slow-converging case errs low, never wildly. ``v0`` warm-starts the iteration (e.g. with
    the float layer's top singular vector when measuring its slightly perturbed quantized version).
    """
    w = torch.as_tensor(np.asarray(weight), dtype=torch.float64)
    c, h, wd = in_shape
    if w.shape[1] * groups != c:
        raise ValueError(f"weight expects {w.shape[1] * groups} input channels ({groups} groups), input shape has {c}")
    kh, kw = w.shape[2], w.shape[3]
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn((1, c, h, wd), generator=gen, dtype=torch.float64) if v0 is None else v0.double().clone()
    v /= v.norm()
    u = F.conv2d(v, w, stride=stride, padding=padding, groups=groups)
    oh, ow = u.shape[2], u.shape[3]
    op = (_out_padding(h, oh, kh, stride, padding), _out_padding(wd, ow, kw, stride, padding))
    sigma = 0.0
    for _ in range(iters):
        u = F.conv2d(v, w, stride=stride, padding=padding, groups=groups)
        new_sigma = float(u.norm())
        v = _conv_adjoint(u, w, stride, padding, op, groups)
        nv = float(v.norm())
        if nv == 0.0:
            return 0.0, v
        v /= nv
        if abs(new_sigma - sigma) <= tol * max(new_sigma, 1e-30):
            sigma = new_sigma
            break
        sigma = new_sigma
    return float(F.conv2d(v, w, stride=stride, padding=padding, groups=groups).norm()), v


def _conv_adjoint(u: torch.Tensor, w: torch.Tensor, stride: int, padding: int, op: tuple[int, int],
                  groups: int = 1) -> torch.Tensor:
    """Aᵀu for A = conv2d(·, w, stride, padding).

    ``output_padding = (H + 2p − k) mod stride`` restores the exact input size and is always
    < stride, so conv_transpose2d is the exact adjoint (input rows the conv never reads get 0).
    """
    return F.conv_transpose2d(u, w, stride=stride, padding=padding, output_padding=op, groups=groups)


def conv_operator_norms(weights: list[np.ndarray], in_shape: tuple[int, int, int], stride: int = 1, padding: int = 0,
                        iters: int = 60, tol: float = 1e-6, v0: torch.Tensor | None = None,
                        groups: int = 1) -> list[float]:
    """Operator norms of many same-shaped kernels at once (one grouped conv per iteration; a layer's own
    ``groups`` nest inside: ``S·groups`` groups in all).

    Used for the quantized variants of one layer: they are small perturbations of W, so warm-starting
    at W's top singular vector ``v0`` converges in a few dozen iterations.
    """
    s_count = len(weights)
    w = torch.as_tensor(np.stack(weights), dtype=torch.float64)  # [S, O, I, kh, kw]
    _, o, _, kh, kw = w.shape
    wg = w.reshape(s_count * o, -1, kh, kw)
    c, h, wd = in_shape
    if v0 is None:
        v = torch.randn((1, s_count * c, h, wd), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    else:
        v = v0.double().reshape(1, c, h, wd).repeat(1, s_count, 1, 1)

    def norms(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(s_count, -1).norm(dim=1)

    u = F.conv2d(v[:, :c], w[0], stride=stride, padding=padding, groups=groups)
    op = (_out_padding(h, u.shape[2], kh, stride, padding), _out_padding(wd, u.shape[3], kw, stride, padding))
    sigma = torch.zeros(s_count, dtype=torch.float64)
    for _ in range(iters):
        v = v / norms(v).clamp_min(1e-300).repeat_interleave(c).reshape(1, -1, 1, 1)
        u = F.conv2d(v, wg, stride=stride, padding=padding, groups=s_count * groups)
        new = norms(u)
        v = F.conv_transpose2d(u, wg, stride=stride, padding=padding, output_padding=op, groups=s_count * groups)
        done = bool(((new - sigma).abs() <= tol * new.clamp_min(1e-30)).all())
        sigma = new
        if done:
            break
    return [float(x) for x in sigma]


def dense_operator_norm(weight: np.ndarray | torch.Tensor) -> float:
    """Largest singular value of a dense layer (exact, by SVD)."""
    return float(np.linalg.norm(np.asarray(weight, dtype=np.float64), 2))


def operator_norm(graph: Graph, node: Node, weight: np.ndarray | None = None) -> float:
    """Spectral norm of ``node`` (or of ``weight`` in its place) on the node's real input shape."""
    w = node.weight if weight is None else weight
    if node.op == "dense":
        return dense_operator_norm(w)
    if node.op == "conv":
        return conv_operator_norm(w, graph.input_shape_of(node), node.stride, node.padding,  # type: ignore[arg-type]
                                  groups=node.groups)
    raise ValueError(f"node {node.name!r} ({node.op}) has no weights")


@dataclass(frozen=True)
class LayerNorms:
    """Operator norms of one layer under one quantization setting."""

    float_norm: float  # ‖W‖
    quant_norm: float  # ‖Q(W)‖
    error_norm: float  # ‖W − Q(W)‖


def layer_norms(graph: Graph, node: Node, setting: LayerSetting) -> LayerNorms:
    """‖W‖, ‖Q(W)‖ and ‖W − Q(W)‖ as operators on the layer's input shape."""
    q = dequantize_weight(node.weight, setting)
    return LayerNorms(operator_norm(graph, node), operator_norm(graph, node, q),
                      operator_norm(graph, node, node.weight - q))


def conv_matrix(weight: np.ndarray, in_shape: tuple[int, int, int], stride: int = 1, padding: int = 0,
                groups: int = 1) -> np.ndarray:
    """The explicit matrix of a convolution (columns = images of the basis vectors); small layers only.

    Used by the tests as ground truth for :func:`conv_operator_norm`.
    """
    c, h, w = in_shape
    n = c * h * w
    if n > 20_000:
        raise ValueError(f"explicit conv matrix of a {n}-dimensional input is too large")
    eye = torch.eye(n, dtype=torch.float64).reshape(n, c, h, w)
    cols = F.conv2d(eye, torch.as_tensor(weight, dtype=torch.float64), stride=stride, padding=padding, groups=groups)
    return cols.reshape(n, -1).T.numpy()
