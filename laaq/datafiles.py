"""A person's own data: an image-folder tree (``folder:PATH``) or an array file (``npz:PATH``).

Why a module of its own: the built-in sets (:mod:`laaq.data`) are fixed and trusted; files a person brings
are not, so every way they can be wrong — a missing split, images of mixed sizes, a corrupt file, one class,
labels out of range, an empty split — is found while reading, before any training, and reported in one
line that names the file or folder. Both loaders return the same :class:`laaq.data.Split` as the built-in
sets (float32 NCHW in [0, 1], int64 labels), so nothing downstream knows where the data came from; the
content hash of the pixels and labels goes into the checkpoint key as for every data set.

Folder layout (torchvision's ImageFolder, one subfolder per class, class = sorted subfolder index)::

    PATH/train/<class>/*.png|jpg|jpeg|bmp|webp
    PATH/test/<class>/...        (or PATH/val/<class>/...)

Array file: ``x_train, y_train, x_test, y_test``; images NCHW or NHWC (channels 1 or 3 either way; a 3-D
array is N×H×W grayscale), uint8 0–255 or float in [0, 1]; labels integers 0 … C−1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from laaq.datasplit import DataError, Normalization, Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
FILE_KINDS = ("folder", "npz")
NORM_TAG = "+norm="


@dataclass(frozen=True)
class DataSpec:
    """What ``--dataset`` names: a built-in set, or a folder / array file and the image size to read it at.

    ``image_size`` (folder only): every image is resized (shorter side) and center-cropped to a square of
    this size; without it every image must already have the same size.
    """

    kind: str  # a built-in name (mnist5k, digits, cifar10) or one of FILE_KINDS
    path: Path | None = None
    image_size: int | None = None
    normalization: Normalization | None = None  # --normalize: the model's first layer, folded on import

    @classmethod
    def parse(cls, text: str, image_size: int | None = None, normalize: str | None = None) -> DataSpec:
        """``mnist5k`` | ``folder:PATH`` | ``folder@SIZE:PATH`` | ``npz:PATH``, each optionally with
        ``+norm=MEAN/STD`` before the colon (``cifar10+norm=imagenet``, ``folder@224+norm=0.5/0.25:PATH``);
        ``image_size`` (``--image-size``) is the same as ``@SIZE``, ``normalize`` (``--normalize``) as ``+norm=``."""
        head, sep, rest = text.partition(":")
        head, plus, norm_text = head.partition(NORM_TAG)
        if plus and normalize is not None and Normalization.parse(norm_text) != Normalization.parse(normalize):
            raise DataError(f"{text!r} says normalization {norm_text}, --normalize {normalize}: give one")
        norm = Normalization.parse(normalize if normalize is not None else norm_text) if plus or normalize else None
        if not sep:
            if image_size is not None:
                raise DataError(f"--image-size applies to folder:PATH data only, not the built-in {text!r}")
            return cls(head, normalization=norm)
        kind = head
        kind, at, size_text = kind.partition("@")
        if kind not in FILE_KINDS:
            raise DataError(f"unknown data source {kind!r} in {text!r}; use folder:PATH or npz:PATH")
        if not rest:
            raise DataError(f"{text!r} names no path; use {kind}:PATH")
        if at:
            if not size_text.isdigit():
                raise DataError(f"{text!r}: the size after @ must be a number of pixels (folder@224:PATH)")
            if image_size is not None and image_size != int(size_text):
                raise DataError(f"{text!r} says size {size_text}, --image-size {image_size}: give one")
            image_size = int(size_text)
        if image_size is not None and (kind != "folder" or image_size < 4):
            raise DataError(f"image size {image_size}: only folder data is resized, to at least 4 pixels")
        return cls(kind, Path(rest).expanduser(), image_size, norm)

    def text(self) -> str:
        """The canonical ``--dataset`` text (what a config stores; :meth:`parse` reads it back)."""
        norm = f"{NORM_TAG}{self.normalization.text()}" if self.normalization else ""
        if not self.is_file:
            return self.kind + norm
        return f"{self.kind}{f'@{self.image_size}' if self.image_size else ''}{norm}:{self.path}"

    @property
    def is_file(self) -> bool:
        return self.kind in FILE_KINDS

    def slug(self) -> str:
        """A name safe in file names and run ids: ``folder-<dir name>[-<size>]``, ``npz-<file stem>``."""
        norm = "-norm" if self.normalization else ""
        if not self.is_file:
            return self.kind + norm
        assert self.path is not None
        stem = self.path.resolve().name if self.kind == "folder" else self.path.stem
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:40] or "data"
        return f"{self.kind}-{safe}" + (f"-{self.image_size}" if self.image_size else "") + norm

    def load(self) -> Split:
        assert self.path is not None, "built-in sets are loaded by laaq.data.load_dataset"
        split = load_folder(self.path, self.image_size, self.slug()) if self.kind == "folder" \
            else load_npz(self.path, self.slug())
        return self.normalize(split)

    def normalize(self, split: Split) -> Split:
        """The split with this spec's normalization attached (checked against its channel count)."""
        if self.normalization is None:
            return split
        self.normalization.check_channels(split.input_shape[0], self.text())
        return replace(split, normalization=self.normalization)


# ---------------------------------------------------------------------------------------------- folders

def _classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_image(path: Path, size: int | None, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None:
                w, h = im.size
                s = size / min(w, h)
                im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            a = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _image_mode(files: list[Path]) -> str:
    """'L' when every image is grayscale (checked on the header only), else 'RGB'."""
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode not in ("L", "1", "I;16", "I", "LA"):
                    return "RGB"
        except OSError as e:
            raise DataError(f"cannot read image {f} ({type(e).__name__}: {e})") from e
    return "L"


def load_folder(root: Path, image_size: int | None = None, name: str = "folder") -> Split:
    """An ImageFolder tree with ``train/`` and ``test/`` (or ``val/``) splits; see the module doc."""
    if not root.is_dir():
        raise DataError(f"data folder {root} not found (expected {root}/train/<class>/ and {root}/test/<class>/)")
    train_dir = root / "train"
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        missing = "train/" if not train_dir.is_dir() else "test/ (or val/)"
        raise DataError(f"data folder {root} has no {missing} split (expected {root}/train/<class>/ and "
                        f"{root}/test/<class>/)")
    classes = _classes(train_dir)
    if len(classes) < 2:
        raise DataError(f"{train_dir} has {len(classes)} class folder(s); a classifier needs at least 2")
    unknown = sorted(set(_classes(test_dir)) - set(classes))
    if unknown:
        raise DataError(f"{test_dir} has class folders not in {train_dir}: {', '.join(unknown[:5])}")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split_dir in (train_dir, test_dir):
        items = [(f, i) for i, c in enumerate(classes) if (split_dir / c).is_dir()
                 for f in sorted((split_dir / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not items:
            raise DataError(f"{split_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
        files[split_dir.name] = items
    mode = _image_mode([f for items in files.values() for f, _ in items])
    arrays = []
    for split_dir in (train_dir, test_dir):
        items = files[split_dir.name]
        imgs = [_read_image(f, image_size, mode) for f, _ in items]
        shapes = {im.shape for im in imgs}
        if len(shapes) > 1:
            first = next(f for (f, _), im in zip(items, imgs, strict=True) if im.shape != imgs[0].shape)
            raise DataError(f"images of mixed sizes in {split_dir} (e.g. {items[0][0].name} is "
                            f"{imgs[0].shape[1]}x{imgs[0].shape[2]}, {first.name} is not); pass --image-size N")
        arrays.append((np.stack(imgs), np.array([i for _, i in items], dtype=np.int64)))
    (xtr, ytr), (xte, yte) = arrays
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{train_dir} images are {xtr.shape[2]}x{xtr.shape[3]}, {test_dir} images "
                        f"{xte.shape[2]}x{xte.shape[3]}; pass --image-size N")
    return _to_split(name, xtr, ytr, xte, yte, str(root))


# ---------------------------------------------------------------------------------------------- arrays

def _nchw(a: np.ndarray, key: str, path: Path) -> np.ndarray:
    if a.ndim == 3:
        return a[:, None]
    if a.ndim != 4:
        raise DataError(f"{path}: {key} has shape {a.shape}; expected N×C×H×W, N×H×W×C or N×H×W")
    if a.shape[1] in (1, 3):
        return a
    if a.shape[3] in (1, 3):
        return a.transpose(0, 3, 1, 2)
    raise DataError(f"{path}: {key} has shape {a.shape}; neither axis 1 nor axis 3 holds 1 or 3 channels")


def load_npz(path: Path, name: str = "npz") -> Split:
    """``x_train, y_train, x_test, y_test`` from an ``.npz`` file (no pickled objects are loaded)."""
    if not path.is_file():
        raise DataError(f"array file {path} not found (expected an .npz with x_train, y_train, x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)} (has: {', '.join(f.files) or 'nothing'})")
            raw = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except Exception as e:  # not a zip, truncated, an object array
        raise DataError(f"cannot read array file {path} ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from e
    xs = []
    for key in ("x_train", "x_test"):
        a = _nchw(raw[key], key, path)
        if a.dtype == np.uint8:
            pass
        elif np.issubdtype(a.dtype, np.floating):
            if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
                raise DataError(f"{path}: {key} is {a.dtype} outside [0, 1]; give uint8 0-255 or floats in [0, 1]")
        else:
            raise DataError(f"{path}: {key} is {a.dtype}; give uint8 0-255 or floats in [0, 1]")
        xs.append(a)
    ys = []
    for key in ("y_train", "y_test"):
        y = raw[key]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: {key} must be a 1-D integer array of class indices (is {y.dtype} {y.shape})")
        ys.append(y.astype(np.int64))
    for x, y, split in ((xs[0], ys[0], "train"), (xs[1], ys[1], "test")):
        if len(x) != len(y):
            raise DataError(f"{path}: x_{split} has {len(x)} images but y_{split} {len(y)} labels")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DataError(f"{path}: x_train images are {xs[0].shape[1:]}, x_test images {xs[1].shape[1:]}")
    return _to_split(name, xs[0], ys[0], xs[1], ys[1], str(path))


def _to_split(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, where: str) -> Split:
    """Shared checks (empty split, labels, class count) and the conversion to [0, 1] float32 tensors."""
    for x, split in ((xtr, "train"), (xte, "test")):
        if len(x) == 0:
            raise DataError(f"{where}: the {split} split is empty")
    if ytr.min() < 0 or yte.min() < 0:
        raise DataError(f"{where}: negative labels; classes must be numbered 0 … C-1")
    if len(np.unique(ytr)) < 2:
        raise DataError(f"{where}: the training split has only one class ({int(ytr[0])}); a classifier needs 2+")
    n_classes = int(ytr.max()) + 1
    if int(yte.max()) >= n_classes:
        raise DataError(f"{where}: test labels reach {int(yte.max())}, "
                        f"but the training labels only 0 … {n_classes - 1}")

    def f(a: np.ndarray) -> torch.Tensor:
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        return torch.as_tensor(np.ascontiguousarray(a))

    return Split(name, f(xtr), torch.as_tensor(ytr), f(xte), torch.as_tensor(yte))
