"""Shared fixtures: a private checkpoint cache and a tiny trained model (seconds, not minutes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from laaq.attacks import PGDConfig
from laaq.data import load_digits
from laaq.train import TrainConfig, train_or_load

TINY_TRAIN = TrainConfig(arch="tinycnn", epochs=3, adversarial=True, batch_size=64, lr=5e-3,
                         pgd=PGDConfig(eps=0.1, step_size=0.03, steps=3))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never read or write the user's checkpoint cache (emulator cache excepted: it is costly)."""
    d = tmp_path_factory.mktemp("cache")
    os.environ["LAAQ_CACHE"] = str(d)
    os.environ.setdefault("LAAQ_EMU_CACHE", str(Path.home() / ".cache" / "laaq-bench"))
    torch.set_num_threads(2)
    return d


@pytest.fixture(scope="session")
def digits():
    return load_digits(seed=0)


@pytest.fixture(scope="session")
def tiny_model(digits, private_cache):
    model, _, _ = train_or_load(digits, TINY_TRAIN, cache_dir=private_cache, progress=False)
    return model
