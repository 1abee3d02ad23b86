"""Quantizers, fixed-point requantization and the plan format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from laaq.quant.integer import requantize
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import dequantize_weight, fixed_point, qmax, quantize_input, quantize_weight


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("clip", [1.0, 0.7])
def test_weight_quantizer_range_and_error(bits: int, clip: float) -> None:
    rng = np.random.default_rng(bits)
    w = rng.standard_t(3, size=(8, 4, 3, 3)).astype(np.float32)
    q, s = quantize_weight(w, LayerSetting(bits, clip))
    assert q.dtype == np.int8
    assert np.abs(q).max() <= qmax(bits)
    # every channel uses its top code when clip == 1 (max-abs scaling)
    if clip == 1.0:
        assert (np.abs(q.reshape(8, -1)).max(1) == qmax(bits)).all()
    deq = dequantize_weight(w, LayerSetting(bits, clip))
    step = np.broadcast_to(s.reshape(-1, 1, 1, 1), w.shape)
    inside = np.abs(w) <= step * qmax(bits)
    # round-to-nearest: error at most half a step for weights inside the clipped range
    assert (np.abs(deq - w)[inside] <= step[inside] / 2 + 1e-6).all()
    # round trip: quantizing Q(W) again gives the same integers
    q2, _ = quantize_weight(deq, LayerSetting(bits, 1.0)) if clip == 1.0 else (q, s)
    assert np.array_equal(q2, q)


def test_fixed_point_represents_multipliers() -> None:
    m = np.array([0.0012, 0.5, 0.9999, 3.7e-5])
    M, shift = fixed_point(m)
    assert M.max() < 2**31 and M.min() > 0
    np.testing.assert_allclose(M / 2.0**shift, m, rtol=2e-6)


def test_requantize_matches_exact_rational_rounding() -> None:
    """(acc·M + 2^(s−1)) >> s equals floor(acc·M/2^s + 1/2), computed with Python integers."""
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**24), 2**24, size=(64, 5)).astype(np.int32)
    M, shift = fixed_point(rng.uniform(1e-4, 0.2, size=5))
    got = requantize(acc, M, shift, -128, 127)
    half = 1 << (shift - 1)
    want = np.array([[max(-128, min(127, (int(a) * int(m) + half) >> shift)) for a, m in zip(row, M, strict=True)]
                     for row in acc])
    assert np.array_equal(got, want)
    # ties round up (towards +inf), also for negative values
    one = np.array([[3, -3]], dtype=np.int64)
    assert requantize(one, np.array([1 << 30, 1 << 30]), 31, -128, 127).tolist() == [[2, -1]]


def test_input_quantization_is_round_half_up_and_clamped() -> None:
    x = torch.tensor([0.0, 1.0, 0.5 / 255, 1.5 / 255, -0.2, 1.3])
    assert quantize_input(x).tolist() == [0, 255, 1, 2, 0, 255]


def test_plan_json_round_trip_and_validation(tmp_path) -> None:
    plan = QuantPlan({"a": LayerSetting(3, 0.8), "b": LayerSetting(8, 1.0)}, name="p", meta={"by": "test"})
    p = tmp_path / "plan.json"
    p.write_text(plan.to_json())
    back = QuantPlan.from_file(p)
    assert back == plan and back.digest() == plan.digest()
    assert plan.avg_bits({"a": 100, "b": 300}) == pytest.approx((3 * 100 + 8 * 300) / 400)
    with pytest.raises(ValueError, match="weight bits"):
        LayerSetting(9)
    with pytest.raises(ValueError, match="clip"):
        LayerSetting(4, 0.0)
    with pytest.raises(ValueError, match="not a valid quantization plan"):
        QuantPlan.from_json(json.dumps({"layers": {"a": {"bits": 4}}}))
    with pytest.raises(ValueError, match="missing"):
        plan.check_covers(["a", "b", "c"])
