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


# ------------------------------------------------------------------ a person's own data: folders and arrays

def _png_folder(root, sizes=((12, 12),), classes=("cat", "dog", "eel"), per_class=3, rgb=True,
                splits=("train", "test")):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = sizes[i % len(sizes)]
                a = rng.integers(0, 256, size=(h, w, 3) if rgb else (h, w), dtype=np.uint8)
                Image.fromarray(a).save(root / split / c / f"{i}.png")
    return root


def test_folder_dataset_reads_classes_channels_and_pixels(tmp_path) -> None:
    from PIL import Image

    root = _png_folder(tmp_path / "imgs")
    split = load_dataset(f"folder:{root}")
    assert split.x_train.shape == (9, 3, 12, 12) and split.x_test.shape == (9, 3, 12, 12)
    assert split.num_classes == 3 and split.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    raw = np.asarray(Image.open(root / "train" / "dog" / "1.png"))
    np.testing.assert_array_equal(np.round(split.x_train[4].numpy().transpose(1, 2, 0) * 255), raw)
    assert split.name == "folder-imgs"
    gray = load_dataset(f"folder:{_png_folder(tmp_path / 'g', rgb=False, classes=('a', 'b'))}")
    assert gray.input_shape == (1, 12, 12) and gray.num_classes == 2


def test_folder_dataset_resizes_and_crops_mixed_sizes(tmp_path) -> None:
    root = _png_folder(tmp_path / "mixed", sizes=((12, 12), (20, 16)))
    from laaq.data import DataError as DE
    with pytest.raises(DE, match="mixed sizes.*--image-size"):
        load_dataset(f"folder:{root}")
    split = load_dataset(f"folder@8:{root}")
    assert split.input_shape == (3, 8, 8) and split.name == "folder-mixed-8"


def test_npz_dataset_layouts_and_dtypes(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 6, 6, 3), dtype=np.uint8)  # NHWC uint8
    y = np.arange(20) % 4
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    split = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    assert split.input_shape == (3, 6, 6) and split.num_classes == 4
    np.testing.assert_allclose(split.x_train[3].numpy() * 255, x[3].transpose(2, 0, 1), atol=1e-4)
    xf = rng.random((8, 1, 5, 5)).astype(np.float32)  # NCHW float in [0, 1]
    np.savez(tmp_path / "b.npz", x_train=xf, y_train=np.arange(8) % 2, x_test=xf, y_test=np.arange(8) % 2)
    np.testing.assert_array_equal(load_dataset(f"npz:{tmp_path / 'b.npz'}").x_test.numpy(), xf)


@pytest.mark.parametrize("case, match", [
    ("no_test", "no test/ \\(or val/\\) split"),
    ("one_class", "1 class folder"),
    ("corrupt", "cannot read image .*bad.png"),
    ("empty_test", "holds no images"),
    ("missing", "not found"),
])
def test_folder_dataset_errors_name_the_folder_or_file(tmp_path, case, match) -> None:
    root = tmp_path / "d"
    if case == "no_test":
        _png_folder(root, splits=("train",))
    elif case == "one_class":
        _png_folder(root, classes=("only",))
    elif case == "corrupt":
        _png_folder(root)
        (root / "test" / "cat" / "bad.png").write_bytes(b"\x89PNG not really")
    elif case == "empty_test":
        _png_folder(root, splits=("train",))
        (root / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=match):
        load_dataset(f"folder:{root}")


@pytest.mark.parametrize("case, match", [
    ("labels_out_of_range", "test labels reach 7"),
    ("one_class", "only one class"),
    ("empty", "test split is empty"),
    ("missing_key", "lacks y_test"),
    ("float_range", "outside \\[0, 1\\]"),
    ("not_npz", "cannot read array file"),
    ("count", "has 10 images but y_train 9 labels"),
])
def test_npz_dataset_errors_name_the_file(tmp_path, case, match) -> None:
    x = np.zeros((10, 1, 4, 4), np.uint8)
    y = np.arange(10) % 3
    arrays = dict(x_train=x, y_train=y, x_test=x, y_test=y)
    if case == "labels_out_of_range":
        arrays["y_test"] = np.full(10, 7)
    elif case == "one_class":
        arrays["y_train"] = np.zeros(10, int)
    elif case == "empty":
        arrays["x_test"], arrays["y_test"] = x[:0], y[:0]
    elif case == "missing_key":
        arrays.pop("y_test")
    elif case == "float_range":
        arrays["x_train"] = np.full((10, 1, 4, 4), 2.0, np.float32)
    elif case == "count":
        arrays["y_train"] = y[:9]
    path = tmp_path / "d.npz"
    if case == "not_npz":
        path.write_bytes(b"plain text")
    else:
        np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as err:
        load_dataset(f"npz:{path}")
    assert "d.npz" in str(err.value)


def test_dataset_spec_text_round_trips_and_refuses_bad_sizes() -> None:
    from laaq.datafiles import DataSpec

    s = DataSpec.parse("folder:/data/imgs", image_size=32)
    assert s.text() == "folder@32:/data/imgs" and DataSpec.parse(s.text()) == s
    assert DataSpec.parse("mnist5k").text() == "mnist5k"
    for bad in ("folder@x:/d", "tar:/d", "npz:"):
        with pytest.raises(DataError):
            DataSpec.parse(bad)
    with pytest.raises(DataError, match="folder"):
        DataSpec.parse("npz:/d.npz", image_size=32)
    with pytest.raises(DataError, match="give one"):
        DataSpec.parse("folder@16:/d", image_size=32)
