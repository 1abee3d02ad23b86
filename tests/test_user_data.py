"""A person's own data through the command line: an image folder and an array file, end to end.

Generated data only: sklearn's 8×8 digits of three classes written as PNG files (and as an ``.npz``), so the
class count (3) and the input come from the files, not from a built-in set.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.test_bad_inputs import error_line

TINY = ["--arch", "tinycnn", "--epochs", "4", "--lr", "0.01", "--eps", "0.1", "--eval-samples", "40",
        "--batch-large", "8", "--repeat", "1", "--number", "1", "--warmup", "0", "--attack", "quick", "--quiet"]


def digit_folder(root: Path, classes: int = 3) -> Path:
    """Digits 0..classes-1 as grayscale PNGs in train/ and test/ class folders (about 4:1)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.flatnonzero(d.target < classes)
    for k, i in enumerate(keep):
        split = "test" if k % 5 == 0 else "train"
        folder = root / split / f"digit{d.target[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).round().astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_folder_dataset_through_bench_is_bit_exact(tmp_path: Path) -> None:
    """With a normalization too: folded into the first conv, the integer model still bit-exact on TVM."""
    data = digit_folder(tmp_path / "my digits")
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["bench", "--target", "x86", "--dataset", f"folder:{data}", "--variants", "fp32,int8",
                                  "--normalize", "0.3/0.35", "--results-dir", str(out), *TINY])
    assert r.exit_code == 0, r.output
    (run,) = list(out.iterdir())
    assert run.name.startswith("x86-folder-my_digits-norm-tinycnn-")
    doc = json.loads((run / "run.json").read_text())
    assert doc["config"]["dataset"] == f"folder+norm=0.3/0.35:{data}"
    df = pd.read_csv(run / "metrics.csv").set_index("variant")
    assert set(df.index) == {"fp32", "int8"}
    assert df.loc["int8", "bitexact"] == 1.0 and df.loc["int8", "agreement"] == 1.0
    assert df.loc["fp32", "clean_acc"] > 0.6, "three digit classes are easy: the folder's labels must have been read"


def test_npz_dataset_with_image_size_refused_and_class_count_from_labels(tmp_path: Path) -> None:
    from laaq.data import load_digits

    s = load_digits()
    keep_tr, keep_te = s.y_train < 4, s.y_test < 4
    path = tmp_path / "four.npz"
    np.savez(path, x_train=s.x_train[keep_tr].numpy(), y_train=s.y_train[keep_tr].numpy(),
             x_test=s.x_test[keep_te].numpy(), y_test=s.y_test[keep_te].numpy())
    r = CliRunner().invoke(main, ["search", "--dataset", f"npz:{path}", "--image-size", "16", *TINY[:8]])
    assert r.exit_code == 2 and "Traceback" not in r.output  # click's usage error: one Error line naming the option
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert "--image-size" in line and "only folder data is resized" in line


@pytest.mark.parametrize("spoil, names", [
    ("missing", "nowhere"),
    ("corrupt", "broken.png"),
    ("one_class", "1 class folder"),
])
def test_bad_folder_is_one_line_and_writes_nothing(tmp_path: Path, spoil: str, names: str) -> None:
    n_classes = 1 if spoil == "one_class" else 3
    data = tmp_path / "nowhere" if spoil == "missing" else digit_folder(tmp_path / "d", n_classes)
    if spoil == "corrupt":
        (data / "test" / "digit1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["bench", "--target", "x86", "--dataset", f"folder:{data}", "--variants", "int8",
                                  "--results-dir", str(out), *TINY])
    if spoil == "missing":  # found while the options are parsed: click's usage error (exit 2)
        assert r.exit_code == 2 and [ln for ln in r.output.splitlines() if ln.startswith("Error:") and names in ln]
    else:
        assert names in error_line(r)
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def test_image_size_before_or_after_the_dataset_option(tmp_path: Path) -> None:
    """--image-size folds into the data set whichever comes first on the command line."""
    from harness.options import _train_options

    seen = {}

    @click.command()
    @_train_options
    def probe(dataset, **_):  # noqa: ANN001, ANN003
        seen["dataset"] = dataset

    data = digit_folder(tmp_path / "d")
    for args in (["--image-size", "16", "--dataset", f"folder:{data}"], ["--dataset", f"folder:{data}", "--image-size",
                                                                         "16"]):
        r = CliRunner().invoke(probe, args)
        assert r.exit_code == 0, r.output
        assert seen["dataset"] == f"folder@16:{data}"
