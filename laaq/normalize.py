"""The data's normalization as the model's first layer: ``normalized(model, norm)``.

Why a wrapper module rather than normalizing the data: the harness feeds every backend the same images in
[0, 1] (the integer model takes them as uint8 codes) and measures ε in those pixel units. A model trained on
normalized inputs therefore carries its normalization inside; the importer folds it into the first
convolution (:mod:`laaq.importer.translate`, exactly, with a bias map at the borders), so the deployed model
has no extra layer and still takes uint8 pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from laaq.datasplit import Normalization


class InputNormalization(nn.Module):
    """``(x − mean) / std`` per channel; the constants are non-persistent buffers (not in a state dict, so a
    person's weights file for the bare model still loads into :attr:`Normalized.inner`)."""

    def __init__(self, norm: Normalization) -> None:
        super().__init__()
        c = len(norm.mean)
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).reshape(c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).reshape(c, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Normalized(nn.Module):
    """A model behind its input normalization."""

    def __init__(self, inner: nn.Module, norm: Normalization) -> None:
        super().__init__()
        self.normalize = InputNormalization(norm)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.normalize(x))


def normalized(model: nn.Module, norm: Normalization | None) -> nn.Module:
    """``model`` behind ``norm`` (the model itself when the data has no normalization)."""
    return model if norm is None else Normalized(model, norm)
