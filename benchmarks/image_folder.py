"""Writes an image-folder data set of real pictures for the large-input runs: MNIST-5k digits as tinted RGB PNGs.

    .venv/bin/python benchmarks/image_folder.py OUT [--train 400] [--test 100]

Why: the scaling runs (``benchmarks/scaling.py``, MobileNetV2-1.0 at 224×224) need a ``folder:`` data set, and
this machine reaches no image archive. The embedded MNIST-5k digits, each drawn in a random colour on a random
dark background and saved as a 28×28 RGB PNG in ``OUT/train/<digit>/`` and ``OUT/test/<digit>/``, are real,
labelled images; ``--image-size 224`` then resizes them as it would a person's photos. Deterministic (seed 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_folder(out: Path, n_train: int = 400, n_test: int = 100, seed: int = 0) -> Path:
    from PIL import Image

    from laaq.data import load_mnist5k

    data = load_mnist5k(seed)
    rng = np.random.default_rng(seed)
    for split, x, y, n in (("train", data.x_train, data.y_train, n_train), ("test", data.x_test, data.y_test, n_test)):
        for i in range(min(n, len(x))):
            ink, paper = rng.uniform(0.5, 1.0, 3), rng.uniform(0.0, 0.3, 3)
            d = x[i, 0].numpy()[..., None]
            rgb = (255 * (d * ink + (1 - d) * paper)).round().astype(np.uint8)
            folder = out / split / str(int(y[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(folder / f"{i:05d}.png")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--test", type=int, default=100)
    a = ap.parse_args()
    print(write_folder(a.out, a.train, a.test))


if __name__ == "__main__":
    main()
