"""Batch sizes chosen from memory: how many images a pass may hold at once.

Why: the pipeline's fixed batches (256 calibration images crafted in one PGD batch, every node's activations of
512 images kept for the scales, 500 images per attack batch) cost a few MB on MNIST and ~40 GB for
MobileNetV2-1.0 at 224×224 (each image's activations alone are ~80 MB, and a backward pass keeps them all).
Rather than shrink the model or the evaluation, each such pass splits its images into batches whose memory
stays under a budget — ``LAAQ_BATCH_MIB`` (default 1,536 MiB) per pass. The per-image cost is measured, not
guessed: the bytes autograd saves for the backward pass of one image (every op's saved tensors, as the model
really runs), or a graph's activation elements for forward-only passes. Small models still fit in one batch, so
their results do not change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch

DEFAULT_BUDGET_MIB = 1536
BACKWARD_OVERHEAD = 2.0  # gradients and transients beside the saved tensors (measured ~1.5–1.8× on VGG8/MNv2)


def budget_bytes() -> int:
    """The per-pass budget (``LAAQ_BATCH_MIB``), in bytes; a bad value is refused in one line."""
    text = os.environ.get("LAAQ_BATCH_MIB", "")
    try:
        mib = int(text) if text else DEFAULT_BUDGET_MIB
    except ValueError:
        raise ValueError(f"LAAQ_BATCH_MIB={text!r} is not a number of MiB") from None
    if mib < 16:
        raise ValueError(f"LAAQ_BATCH_MIB={mib}: give at least 16 MiB per pass")
    return mib << 20


def saved_bytes_per_image(model: Callable[[torch.Tensor], torch.Tensor], x1: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of ``model`` on the one image ``x1`` (shape 1×C×H×W)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x1.detach().clone().requires_grad_(True))
    return max(total, x1.numel() * x1.element_size())


def backward_batch(model: Callable[[torch.Tensor], torch.Tensor], x1: torch.Tensor, cap: int) -> int:
    """Images per forward+backward pass of ``model`` within the budget (at most ``cap``, at least 1)."""
    per_image = saved_bytes_per_image(model, x1) * BACKWARD_OVERHEAD
    return max(1, min(cap, int(budget_bytes() // per_image)))


def forward_batch(elements_per_image: int, cap: int, bytes_per_element: int = 4) -> int:
    """Images per forward pass that keeps ``elements_per_image`` values per image (e.g. every node's output)."""
    return max(1, min(cap, int(budget_bytes() // max(1, elements_per_image * bytes_per_element))))


def spans(n: int, batch: int) -> Iterator[slice]:
    """``slice``s of at most ``batch`` items covering ``range(n)`` in order."""
    for i in range(0, n, max(1, batch)):
        yield slice(i, min(n, i + batch))

