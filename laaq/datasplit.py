"""The types every data source returns and raises: a :class:`Split` (with its :class:`Normalization`, if any)
and a :class:`DataError`.

Apart from :mod:`laaq.data` (the built-in sets) and :mod:`laaq.datafiles` (a person's folders and arrays) so that
both can use them without importing each other.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch


class DataError(RuntimeError):
    """A data set that cannot be loaded, with what was expected."""


#: named per-channel normalizations (RGB), the ones pretrained models expect
NORMALIZATION_PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class Normalization:
    """``(x − mean) / std`` per channel, in pixel units of [0, 1]: what the model does first.

    Why it belongs to the data: a model trained on normalized inputs needs the same normalization wherever
    it runs, and ε must stay in pixel units. It becomes the model's first layer
    (:func:`laaq.normalize.normalized`), which the importer folds into the first convolution, so the
    deployed integer model still takes uint8 pixels.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> Normalization:
        """``imagenet`` | ``cifar10`` | ``M1,M2,M3/S1,S2,S3`` (one value each for grayscale)."""
        if text in NORMALIZATION_PRESETS:
            return cls(*NORMALIZATION_PRESETS[text])
        mean_text, slash, std_text = text.partition("/")
        try:
            mean = tuple(float(v) for v in mean_text.split(","))
            std = tuple(float(v) for v in std_text.split(",")) if slash else ()
        except ValueError:
            mean = std = ()
        if not slash or not mean or len(mean) != len(std):
            raise DataError(f"normalization {text!r}: expected MEAN/STD with one value per channel "
                            f"(e.g. 0.5/0.25 or 0.485,0.456,0.406/0.229,0.224,0.225) or one of "
                            f"{', '.join(NORMALIZATION_PRESETS)}")
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise DataError(f"normalization {text!r}: every std must be positive and every value finite")
        return cls(mean, std)

    def text(self) -> str:
        return f"{','.join(f'{v:g}' for v in self.mean)}/{','.join(f'{v:g}' for v in self.std)}"

    def check_channels(self, channels: int, where: str) -> None:
        if len(self.mean) != channels:
            raise DataError(f"{where}: the normalization gives {len(self.mean)} channel(s) ({self.text()}), "
                            f"the images have {channels}")


@dataclass(frozen=True)
class Split:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    normalization: Normalization | None = None  # the model's first layer (laaq.normalize), when the data needs one

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def digest(self) -> str:
        """Content hash (for checkpoint cache keys): a changed file means a new model."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(t.numpy().tobytes())
        if self.normalization is not None:  # a different first layer: a different model
            h.update(self.normalization.text().encode())
        return h.hexdigest()[:16]
