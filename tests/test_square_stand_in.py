"""Square answered by a stand-in, the artefact still deciding (issue 23): a stand-in that computes the
deployed function gives the literal run's outcomes; one that differs on a sampled query is caught."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from laaq.quant.integer import logits_from_int
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_graph
from laaq.quant.twin import F32_EXACT, ExactLinear, Twin
from laaq.robustness import AttackPreset, EvalConfig, StandIn, StandInMismatch, evaluate
from laaq.robustness.stand_in import _QuerySample

PRESET = AttackPreset("sq", pgd_steps=5, square_queries=60, check_samples=40)
CFG = EvalConfig(PRESET, 0.1, seed=0, checks=False)


@pytest.fixture(scope="module")
def setup(digits, tiny_model):
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), digits.x_train[:128])
    return Twin(qg).eval(), qg, digits.x_test[:60], digits.y_test[:60]


def _deployed(twin: Twin, qg):
    """The 'artefact' of these tests: the integer function through the twin's exact path, counted."""
    calls = {"rows": 0}

    def raw(t: torch.Tensor) -> np.ndarray:
        calls["rows"] += len(t)
        return twin.exact_acc(t).numpy().astype(np.int32)

    def predict(t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(logits_from_int(qg, raw(t)), dtype=torch.float32)

    return raw, predict, calls


def test_exact_stand_in_gives_the_literal_outcome_and_spares_the_artefact(setup) -> None:
    twin, qg, x, y = setup
    raw, predict, calls = _deployed(twin, qg)
    literal = evaluate(twin, x, y, CFG, deployed=predict)
    literal_rows = calls["rows"]
    calls["rows"] = 0
    stand_in = StandIn("bit-exact twin", lambda t: twin.exact_acc(t).numpy(), raw, lambda o: logits_from_int(qg, o),
                       exact=True, min_sample=50)
    judged = evaluate(twin, x, y, CFG, deployed=predict, stand_in=stand_in)
    # same function, same seed: Square takes the same path, and every outcome is the same
    assert np.array_equal(judged.robust, literal.robust)
    for k in literal.cumulative:
        assert np.array_equal(judged.cumulative[k], literal.cumulative[k]), k
    check = judged.stand_in
    assert check is not None and check.ok and check.exact and check.mismatched == 0
    assert check.queries > 0 and check.sampled == min(check.queries, max(50, int(np.ceil(0.01 * check.queries))))
    assert check.argmax_agreement == 1.0 and check.max_abs_diff == 0
    assert "square_verify" in judged.seconds
    # the artefact saw the judged examples and the sample, far fewer rows than Square's queries
    assert calls["rows"] < literal_rows and calls["rows"] < check.queries


def test_a_stand_in_that_differs_from_the_artefact_is_caught(setup) -> None:
    twin, qg, x, y = setup
    raw, predict, _ = _deployed(twin, qg)

    def off_by_one(t: torch.Tensor) -> np.ndarray:  # one accumulator off by 1 on queries far from the clean images
        out = twin.exact_acc(t).numpy().copy()
        out[(t.flatten(1).sum(1) % 2 > 1).numpy(), 0] += 1
        return out

    bad = StandIn("faulty twin", off_by_one, raw, lambda o: logits_from_int(qg, o), exact=True, min_sample=200)
    with pytest.raises(StandInMismatch, match="faulty twin.*--square-on-device"):
        evaluate(twin, x, y, CFG, deployed=predict, stand_in=bad)


def test_float_stand_in_tolerates_rounding_but_not_a_different_function(tiny_model, digits) -> None:
    x, y = digits.x_test[:40], digits.y_test[:40]

    def logits(t: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return tiny_model(t).numpy()

    def rounding(t: torch.Tensor) -> np.ndarray:  # an artefact that differs by float rounding only
        return logits(t) + np.float32(1e-6)

    def biased(t: torch.Tensor) -> np.ndarray:  # a different function: one logit shifted
        out = logits(t).copy()
        out[:, 3] += 0.5
        return out

    cfg = EvalConfig(replace(PRESET, square_queries=30), 0.1, checks=False)
    ok = evaluate(tiny_model, x, y, cfg, deployed=lambda t: torch.as_tensor(rounding(t)),
                  stand_in=StandIn("float model", logits, rounding, lambda o: o, exact=False))
    assert ok.stand_in is not None and ok.stand_in.ok and 0 < ok.stand_in.max_abs_diff < 1e-5
    with pytest.raises(StandInMismatch):
        evaluate(tiny_model, x, y, cfg, deployed=lambda t: torch.as_tensor(biased(t)),
                 stand_in=StandIn("float model", logits, biased, lambda o: o, exact=False))


def test_query_sample_is_uniform_over_the_stream() -> None:
    """Reservoir sampling: each of 20,000 offered rows is kept with the same chance (first and last halves alike)."""
    s = _QuerySample(capacity=2000, seed=1)
    for start in range(0, 20_000, 500):
        ids = torch.arange(start, start + 500, dtype=torch.float32).reshape(-1, 1)
        s.offer(ids, ids.numpy())
    xs, outs = s.take(2000)
    assert s.seen == 20_000 and len(xs) == 2000 and np.array_equal(xs.numpy(), outs)
    late = int((xs[:, 0] >= 10_000).sum())
    assert 880 < late < 1120  # binomial(2000, 0.5): ±5.4 standard deviations


@pytest.mark.parametrize(("channels", "scale", "regime"), [(64, 1, "f32"), (256, 1, "split"), (64, 4000, "f64")])
def test_exact_linear_is_exact_in_every_regime(channels: int, scale: int, regime: str) -> None:
    """float32 when the bound allows, the hi/lo split when only it fits, float64 beyond: same integers."""
    g = torch.Generator().manual_seed(channels + scale)
    w = torch.randint(-127, 128, (8, channels, 3, 3), generator=g).numpy() * scale
    x = torch.randint(0, 256, (4, channels, 9, 9), generator=g).to(torch.int64)
    x[0, 0, 0, 0] = 255  # the bound's input maximum is reached
    e = ExactLinear(w, "conv", 1, 1)
    assert regime == ("f32" if 255 * e.abs_sum < F32_EXACT else "split" if 255 * e.split_sum < F32_EXACT else "f64")
    ref = torch.nn.functional.conv2d(x.double(), torch.as_tensor(w, dtype=torch.float64), padding=1)
    assert torch.equal(e(x, 255), torch.round(ref).to(torch.int64))


def test_attack_device_is_resolved_once_and_refused_when_absent(monkeypatch) -> None:
    from laaq.robustness import AttackError, attack_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attack_device("auto") == "cpu" and attack_device("cpu") == "cpu"
    with pytest.raises(AttackError, match="sees no CUDA GPU"):
        attack_device("cuda")
    with pytest.raises(AttackError, match="auto, cpu or cuda"):
        attack_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert attack_device("auto") == "cuda"


def test_evaluation_leaves_the_callers_model_in_eval_mode(digits) -> None:
    """torchattacks restores the mode it finds on the module it is given: the progress wrapper must carry the
    model's eval mode, or batch-norm switches to batch statistics after the first APGD member (then the float
    stand-in no longer computes the artefact's function — the sampled check caught it in a default bench)."""
    from laaq.models import build_model

    model = build_model("vgg8", (1, 8, 8), 10).eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    cfg = EvalConfig(AttackPreset("ce", apgd_ce_steps=3), 0.1, checks=False)
    x = digits.x_test[:16]
    with torch.no_grad():
        y = model(x).argmax(1)  # every image "correct": the attack runs on all of them
    evaluate(model, x, y, cfg)
    assert not model.training and not any(m.training for m in model.modules())
