"""The operator norms must be exact: checked against the SVD of each small layer's explicit matrix."""

from __future__ import annotations

import numpy as np
import pytest

from laaq.graph import Graph, Node
from laaq.lipschitz import (
    conv_matrix,
    conv_operator_norm,
    conv_operator_norms,
    dense_operator_norm,
    layer_norms,
    operator_norm,
)
from laaq.quant.plan import LayerSetting
from laaq.quant.quantizers import dequantize_weight

CASES = [
    # (out, in, k, in_shape (C,H,W), stride, padding)
    (4, 2, 3, (2, 7, 7), 1, 1),
    (4, 2, 3, (2, 8, 8), 2, 1),  # stride 2, even size: the adjoint needs output_padding
    (3, 2, 3, (2, 9, 9), 2, 1),  # stride 2, odd size
    (5, 3, 3, (3, 6, 6), 1, 0),  # no padding
    (4, 3, 1, (3, 6, 6), 2, 0),  # 1×1 stride-2 shortcut: skips rows and columns
    (2, 1, 5, (1, 9, 8), 3, 2),  # stride 3, non-square input
]


@pytest.mark.parametrize("o,i,k,shape,stride,padding", CASES)
def test_conv_norm_matches_svd(o: int, i: int, k: int, shape: tuple[int, int, int], stride: int,
                               padding: int) -> None:
    rng = np.random.default_rng(o * 100 + k * 10 + stride)
    w = rng.standard_normal((o, i, k, k)).astype(np.float32)
    exact = np.linalg.svd(conv_matrix(w, shape, stride, padding), compute_uv=False)[0]
    est = conv_operator_norm(w, shape, stride, padding)
    assert abs(est - exact) / exact < 1e-3, (est, exact)


def test_kernel_matrix_norm_is_not_the_operator_norm() -> None:
    """Why we bother: the reshaped-kernel norm equals the operator norm only in special cases (1×1)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    shape = (2, 6, 6)
    exact = np.linalg.svd(conv_matrix(w, shape, 2, 0), compute_uv=False)[0]
    kernel = np.linalg.norm(w.reshape(4, -1), 2)
    assert abs(conv_operator_norm(w, shape, 2, 0) - exact) / exact < 1e-3
    # a 1×1 conv has the kernel's norm regardless of stride; a 3×3 one with padding does not
    assert abs(kernel - exact) / exact < 1e-3
    w3 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    exact3 = np.linalg.svd(conv_matrix(w3, (2, 5, 5), 2, 1), compute_uv=False)[0]
    assert abs(np.linalg.norm(w3.reshape(4, -1), 2) - exact3) / exact3 > 1e-2


def test_dense_and_quantized_error_norms() -> None:
    rng = np.random.default_rng(3)
    conv = Node("c", "conv", ["input"], rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
                np.zeros(4, np.float32), stride=2, padding=1, relu=True)
    flat = Node("f", "flatten", ["c"])
    dense = Node("d", "dense", ["f"], rng.standard_normal((3, 64)).astype(np.float32), np.zeros(3, np.float32))
    g = Graph([conv, flat, dense], (1, 8, 8), 3)
    assert abs(operator_norm(g, dense) - np.linalg.svd(dense.weight.astype(np.float64), compute_uv=False)[0]) < 1e-6
    assert dense_operator_norm(dense.weight) == pytest.approx(operator_norm(g, dense))
    s = LayerSetting(3, 0.8)
    norms = layer_norms(g, conv, s)
    err = conv.weight - dequantize_weight(conv.weight, s)
    exact_err = np.linalg.svd(conv_matrix(err, (1, 8, 8), 2, 1), compute_uv=False)[0]
    exact_q = np.linalg.svd(conv_matrix(dequantize_weight(conv.weight, s), (1, 8, 8), 2, 1), compute_uv=False)[0]
    assert abs(norms.error_norm - exact_err) / exact_err < 1e-3
    assert abs(norms.quant_norm - exact_q) / exact_q < 1e-3
    # more bits, less error (same clip)
    assert layer_norms(g, conv, LayerSetting(8, 1.0)).error_norm < layer_norms(g, conv, LayerSetting(2, 1.0)).error_norm


def test_batched_norms_match_single() -> None:
    """The grouped-conv batch used for all quantized variants of a layer gives the same norms."""
    rng = np.random.default_rng(4)
    shape = (2, 8, 8)
    ws = [rng.standard_normal((3, 2, 3, 3)).astype(np.float32) for _ in range(3)]
    exact = [np.linalg.svd(conv_matrix(w, shape, 2, 1), compute_uv=False)[0] for w in ws]
    got = conv_operator_norms(ws, shape, 2, 1, iters=500, tol=1e-9)
    assert all(abs(g - e) / e < 1e-3 for g, e in zip(got, exact, strict=True)), (got, exact)


GROUPED = [
    # (out, in, groups, k, in_shape, stride, padding)
    (6, 6, 6, 3, (6, 6, 6), 1, 1),  # depthwise
    (6, 6, 6, 3, (6, 7, 7), 2, 1),  # depthwise, stride 2, odd size
    (12, 6, 6, 3, (6, 5, 5), 1, 1),  # depthwise with channel multiplier 2
    (6, 4, 2, 3, (4, 6, 6), 1, 0),  # two groups, no padding
]


@pytest.mark.parametrize("o,i,groups,k,shape,stride,padding", GROUPED)
def test_grouped_conv_norm_matches_svd(o: int, i: int, groups: int, k: int, shape, stride: int, padding: int) -> None:
    """A grouped conv is block-diagonal: its norm (power iteration with the grouped conv and its adjoint) is the
    largest singular value of the explicit matrix."""
    rng = np.random.default_rng(o * 7 + groups)
    w = rng.standard_normal((o, i // groups, k, k)).astype(np.float32)
    exact = np.linalg.svd(conv_matrix(w, shape, stride, padding, groups), compute_uv=False)[0]
    est = conv_operator_norm(w, shape, stride, padding, groups=groups)
    assert abs(est - exact) / exact < 1e-3, (est, exact)
    many = conv_operator_norms([w, 0.5 * w], shape, stride, padding, iters=400, tol=1e-9, groups=groups)
    assert abs(many[0] - exact) / exact < 1e-3 and abs(many[1] - exact / 2) / exact < 1e-3
    g = Graph([Node("dw", "conv", ["input"], w, np.zeros(o, np.float32), stride, padding, groups=groups)], shape, 2)
    assert abs(operator_norm(g, g.node("dw")) - exact) / exact < 1e-3
