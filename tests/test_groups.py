"""Per output-channel-group widths: the setting, the quantizer, the search's graph view, the budget, and the
integer pipeline (twin == reference == TVM, bit for bit) on a grouped plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from harness.backend.schemes import AVX2
from harness.lower import lower_integer, lower_integer_nchwc
from laaq.graph import run_float
from laaq.quant.integer import run_integer
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input, quantize_weight
from laaq.quant.twin import Twin
from laaq.search import Budget, CalibrationRecipe, SearchConfig, layer_stats, search_plan, spend
from laaq.search.groups import group_view

HOST = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})


def _grouped_plan(graph) -> QuantPlan:
    """Every layer with >= 2 channels split in two groups at different widths and clips (2..8 bits)."""
    layers = {}
    for i, n in enumerate(graph.weighted()):
        out = n.weight.shape[0]
        a = out // 2
        lo, hi = LayerSetting(2 + i % 3, 0.7), LayerSetting(5 + i % 4, 1.0)
        layers[n.name] = LayerSetting.grouped([(a, lo), (out - a, hi)]) if a else hi
    return QuantPlan(layers, name="grouped")


def test_grouped_setting_json_bits_and_validation() -> None:
    s = LayerSetting.grouped([(16, LayerSetting(3, 0.8)), (16, LayerSetting(5, 1.0)), (8, LayerSetting(3, 0.8))])
    assert s.bits == 5 and s.mean_bits == pytest.approx((16 * 3 + 16 * 5 + 8 * 3) / 40)
    bits, clips = s.per_channel(40)
    assert list(bits[14:18]) == [3, 3, 5, 5] and clips[-1] == 0.8
    plan = QuantPlan({"a": s, "b": LayerSetting(4, 0.9)})
    again = QuantPlan.from_json(plan.to_json())
    assert again == plan and again.digest() == plan.digest()
    # plain settings serialise exactly as before groups existed (old plan files and digests stay valid)
    assert '"groups"' not in QuantPlan({"b": LayerSetting(4, 0.9)}).to_json()
    assert LayerSetting.grouped([(8, LayerSetting(4, 0.9)), (8, LayerSetting(4, 0.9))]) == LayerSetting(4, 0.9)
    with pytest.raises(ValueError, match="widest group"):
        LayerSetting(8, 1.0, ((4, 3, 1.0), (4, 5, 1.0)))
    with pytest.raises(ValueError, match="covers 40 output channels"):
        s.per_channel(32)


def test_grouped_quantizer_equals_each_group_quantized_alone() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, (24, 5, 3, 3)).astype(np.float32)  # heavy tails, as in robust nets
    s = LayerSetting.grouped([(8, LayerSetting(2, 0.6)), (8, LayerSetting(8, 1.0)), (8, LayerSetting(4, 0.8))])
    q, sc = quantize_weight(w, s)
    for (a, b), g in zip([(0, 8), (8, 16), (16, 24)], [(2, 0.6), (8, 1.0), (4, 0.8)], strict=True):
        qa, sa = quantize_weight(w[a:b], LayerSetting(*g))
        assert np.array_equal(q[a:b], qa) and np.array_equal(sc[a:b], sa)
        assert np.abs(q[a:b]).max() <= 2 ** (g[0] - 1) - 1


def test_group_view_is_the_same_function_and_folds_back(tiny_model, digits) -> None:
    graph = tiny_model.to_graph()
    view = group_view(graph, 4)
    assert view.split_layers and graph.weighted()[-1].name not in view.split_layers  # logits layer stays whole
    x = digits.x_test[:32]
    assert torch.allclose(run_float(graph, x), run_float(view.graph, x), atol=1e-5)  # same sums, other order
    layer = view.split_layers[0]
    units = [u for u, _ in view.units[layer]]
    alloc = {n.name: LayerSetting(8, 1.0) for n in view.graph.weighted()} | {units[0]: LayerSetting(2, 0.5)}
    folded = view.to_layers(alloc)
    assert set(folded) == {n.name for n in graph.weighted()}
    assert folded[layer].groups[0][1:] == (2, 0.5) and folded[layer].bits == 8
    stats = layer_stats(view.graph)
    assert sum(stats[u].params for u in units) == graph.node(layer).weight.size
    with pytest.raises(ValueError, match="at least 1"):
        group_view(graph, 0)


@pytest.mark.parametrize("method", ["mse", "laaq"])
def test_grouped_search_spends_the_budget_it_claims(tiny_model, digits, method) -> None:
    graph = tiny_model.to_graph()
    recipe = CalibrationRecipe(samples=48, attack_steps=2, holdout=32)
    calib = recipe.make(graph, digits.x_train, digits.y_train, 0.1, 0)
    budget = Budget(avg_bits=3.5)
    cfg = SearchConfig(group_size=4, refine_max_evals=20, refine_sweeps=1)
    plan = search_plan(method, graph, calib, budget, cfg)
    stats = layer_stats(graph)
    used = spend(plan.layers, stats, budget)["avg_bits"]
    assert used <= 3.5 + 1e-9 and float(plan.meta["avg_bits"]) == pytest.approx(used, abs=1e-4)
    assert plan.avg_bits({n: s.params for n, s in stats.items()}) == pytest.approx(used)
    assert plan.meta["group_size"] == "4" and plan.meta["grouped_layers"]
    for n in graph.weighted():  # every grouped setting covers its layer
        plan.layers[n.name].per_channel(n.weight.shape[0])
    with pytest.raises(ValueError, match="widest group"):
        search_plan(method, graph, calib, Budget(model_bytes=1e6), cfg)


def test_grouped_plan_bit_exact_twin_reference_tvm(tiny_model, digits) -> None:
    graph = tiny_model.to_graph()
    plan = _grouped_plan(graph)
    assert any(s.groups for s in plan.layers.values())
    qg = quantize_graph(graph, plan, digits.x_train[:128])
    x = digits.x_test[:64]
    xq = quantize_input(x).numpy()
    ref = run_integer(qg, xq)
    _, twin_acc = Twin(qg).forward_int(x)
    assert np.array_equal(twin_acc.numpy(), ref)
    for mod in (lower_integer(qg, len(x)), lower_integer_nchwc(qg, len(x), AVX2, pack_weights=True)):
        vm = relax.VirtualMachine(tvm.compile(mod, target=HOST), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(xq)).numpy()
        assert out.dtype == np.int32 and np.array_equal(out, ref)
