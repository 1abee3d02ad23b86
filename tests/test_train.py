"""Training cache and safe checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from laaq.models import build_model
from laaq.train import CheckpointError, TrainConfig, load_checkpoint, train_or_load
from tests.conftest import TINY_TRAIN


def test_cache_key_covers_hyper_parameters(digits) -> None:
    k = TINY_TRAIN.key(digits.digest())
    assert k == TINY_TRAIN.key(digits.digest())
    assert k != TrainConfig(**{**TINY_TRAIN.__dict__, "seed": 1}).key(digits.digest())
    assert k != TrainConfig(**{**TINY_TRAIN.__dict__, "adversarial": False}).key(digits.digest())
    assert k != TINY_TRAIN.key("other-data")


def test_second_call_loads_from_cache(digits, tiny_model, private_cache) -> None:
    model, path, cached = train_or_load(digits, TINY_TRAIN, cache_dir=private_cache, progress=False)
    assert cached and path.exists()
    for a, b in zip(model.state_dict().values(), tiny_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_corrupt_and_mismatched_checkpoints(tmp_path, digits, tiny_model) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    model = build_model("tinycnn", digits.input_shape, 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad, model)
    good = tmp_path / "good.pt"
    torch.save({"key": "k1", "state_dict": tiny_model.state_dict()}, good)
    with pytest.raises(CheckpointError, match="expected k2"):
        load_checkpoint(good, model, expect_key="k2")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(good, build_model("smallcnn", digits.input_shape, 10))
    sd = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    sd["conv1.weight"][0, 0, 0, 0] = float("nan")
    nan = tmp_path / "nan.pt"
    torch.save({"key": "k", "state_dict": sd}, nan)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(nan, model)
