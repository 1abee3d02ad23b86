"""The two types every data source returns and raises: a :class:`Split` and a :class:`DataError`.

Apart from :mod:`laaq.data` (the built-in sets) and :mod:`laaq.datafiles` (a person's folders and arrays) so that
both can use them without importing each other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


class DataError(RuntimeError):
    """A data set that cannot be loaded, with what was expected."""


@dataclass(frozen=True)
class Split:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

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
        return h.hexdigest()[:16]
