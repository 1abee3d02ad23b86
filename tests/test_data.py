"""Data loaders: embedded MNIST-5k, and CIFAR-10 from a directory in the python-pickle format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from laaq.data import DataError, load_cifar10, load_dataset, load_mnist5k


def _fake_cifar(root, n=6, corrupt=None):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(root / name, "wb") as f:
            pickle.dump(d, f)
    if corrupt:
        (root / corrupt).write_bytes(b"not a pickle")
    return root


def test_cifar_loader_reads_standard_format(tmp_path) -> None:
    root = _fake_cifar(tmp_path / "cifar-10-batches-py")
    split = load_cifar10(tmp_path)  # the parent folder works too
    assert split.x_train.shape == (30, 3, 32, 32) and split.x_test.shape == (6, 3, 32, 32)
    assert 0.0 <= float(split.x_train.min()) and float(split.x_train.max()) <= 1.0
    raw = pickle.load(open(root / "test_batch", "rb"), encoding="latin1")
    np.testing.assert_allclose(split.x_test[0].numpy().reshape(-1) * 255, raw["data"][0], atol=1e-3)
    assert split.y_test.tolist() == list(raw["labels"])


def test_cifar_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(_fake_cifar(tmp_path / "c1", corrupt="data_batch_3"))
    (tmp_path / "c2").mkdir()
    with pytest.raises(DataError, match="missing CIFAR-10 file"):
        load_cifar10(tmp_path / "c2")
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("imagenet")


def test_mnist5k_is_real_shuffled_and_fixed() -> None:
    a, b = load_mnist5k(seed=0), load_mnist5k(seed=0)
    assert a.x_train.shape == (4000, 1, 28, 28) and a.x_test.shape == (1000, 1, 28, 28)
    assert a.digest() == b.digest()
    assert len(set(a.y_test[:100].tolist())) == 10, "the embedded set is sorted by label; the split must shuffle"
    assert load_mnist5k(seed=1).digest() != a.digest()
