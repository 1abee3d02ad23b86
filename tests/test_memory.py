"""Batches chosen from memory (laaq.memory): large models get smaller batches, small ones keep theirs, and
the results that do not depend on batching (activation scales) are identical either way."""

from __future__ import annotations

import pytest
import torch

from laaq.memory import backward_batch, budget_bytes, forward_batch, saved_bytes_per_image, spans
from laaq.models import build_model


def test_saved_bytes_grow_with_the_image_and_batches_shrink(monkeypatch) -> None:
    m = build_model("tinycnn", (1, 8, 8), 10).eval()
    small = saved_bytes_per_image(m, torch.rand(1, 1, 8, 8))
    big_model = build_model("tinycnn", (1, 32, 32), 10).eval()
    big = saved_bytes_per_image(big_model, torch.rand(1, 1, 32, 32))
    assert big > 8 * small > 0  # 16× the pixels
    monkeypatch.setenv("LAAQ_BATCH_MIB", "16")
    assert budget_bytes() == 16 << 20
    b = backward_batch(big_model, torch.rand(1, 1, 32, 32), 10_000)
    assert 1 <= b < 10_000 and b * big <= 16 << 20
    assert backward_batch(m, torch.rand(1, 1, 8, 8), 7) == 7  # never above the cap
    assert forward_batch(1 << 20, 500) == 4  # 4 MiB per image in 16 MiB
    assert [(s.start, s.stop) for s in spans(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    monkeypatch.setenv("LAAQ_BATCH_MIB", "lots")
    with pytest.raises(ValueError, match="LAAQ_BATCH_MIB"):
        budget_bytes()


def test_scales_identical_when_calibration_is_batched(monkeypatch) -> None:
    import numpy as np

    from laaq.graph import infer_shapes
    from laaq.importer import model_graph
    from laaq.quant.quantizers import calibrate

    torch.manual_seed(0)
    m = build_model("resnet20", (3, 32, 32), 10).eval()
    g = model_graph(m, (3, 32, 32))
    x = torch.rand(64, 3, 32, 32)
    whole, whole99 = calibrate(g, x), calibrate(g, x, percentile=99.0)
    monkeypatch.setenv("LAAQ_BATCH_MIB", "16")
    per_image = sum(int(np.prod(s)) for s in infer_shapes(g).values())
    assert forward_batch(per_image, 64) < 64, "the budget must force batches for this test to mean anything"
    assert calibrate(g, x) == whole
    assert calibrate(g, x, percentile=99.0) == whole99


def test_evaluation_and_calibration_run_in_smaller_batches_under_a_small_budget(monkeypatch) -> None:
    from laaq.attacks import PGDConfig
    from laaq.importer import model_graph
    from laaq.robustness import PRESETS, EvalConfig, evaluate
    from laaq.search import make_calibration

    torch.manual_seed(0)
    m = build_model("resnet20", (3, 32, 32), 10).eval()
    x, y = torch.rand(24, 3, 32, 32), torch.randint(0, 10, (24,))
    monkeypatch.setenv("LAAQ_BATCH_MIB", "16")
    assert (16 << 20) // (saved_bytes_per_image(m, x[:1]) * 2) < 24, "the budget must force batches"
    cfg = EvalConfig(PRESETS["quick"], eps=0.03, checks=False)
    r = evaluate(m, x, y, cfg)
    assert r.config.batch < 24 and 0 <= r.robust_acc <= r.clean_acc
    calib = make_calibration(model_graph(m, (3, 32, 32)), x, y, PGDConfig(eps=0.03, step_size=0.01, steps=2), model=m)
    assert calib.x_adv.shape == x.shape and float((calib.x_adv - x).abs().max()) <= 0.03 + 1e-6
    assert float((calib.x_adv - x).abs().max()) > 0  # every batch was attacked, not copied


def test_search_and_refinement_use_a_subset_only_for_large_models() -> None:
    from laaq.importer import model_graph
    from laaq.search.metric import MIN_SEARCH_IMAGES, search_images
    from laaq.search.refinement import MIN_REFINE_IMAGES, refine_images

    small = model_graph(build_model("resnet20", (3, 32, 32), 10).eval(), (3, 32, 32))  # the CIFAR default
    assert search_images(small, 256) == 256 and refine_images(small, 256, 600) == 256
    large = model_graph(build_model("resnet20", (3, 128, 128), 10).eval(), (3, 128, 128))  # 16× the MACs
    assert MIN_SEARCH_IMAGES <= search_images(large, 256) < 256
    assert MIN_REFINE_IMAGES <= refine_images(large, 256, 600) < 256
    assert search_images(large, 5) == 5  # never more than there are
