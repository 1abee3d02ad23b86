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


# --- CI: no silent skips ---------------------------------------------------------------------------------------
# With LAAQ_STRICT_SKIPS=1 (.ci/run sets it) the run fails when a test skips for any reason but hardware the
# machine lacks (a GPU, an instruction set): a set-up failure (no browser, no emulated board, no cross compiler)
# must not pass as a green run with fewer tests. Every skip and its reason is printed either way.
GPU_ONLY = ("CUDA", "GPU", "cuda", "NVML", "VNNI", "vnni")
_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, str(reason)))


def unexpected_skips(skips: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(n, r) for n, r in skips if not any(k in r for k in GPU_ONLY)]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    if not _skips:
        return
    terminalreporter.section("skipped tests and why")
    for node, reason in _skips:
        terminalreporter.write_line(f"{node}: {reason}")
    bad = unexpected_skips(_skips)
    if bad and os.environ.get("LAAQ_STRICT_SKIPS") == "1":
        terminalreporter.write_line(f"LAAQ_STRICT_SKIPS: {len(bad)} test(s) skipped for a reason other than a missing "
                                    "GPU or CPU feature — a set-up step failed; this run fails", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("LAAQ_STRICT_SKIPS") == "1" and unexpected_skips(_skips) and exitstatus == 0:
        session.exitstatus = 1
