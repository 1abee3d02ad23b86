"""The edge-CNN ops (grouped / depthwise conv, ReLU6 / clamp, residual add with and without ReLU, max and
average pool k×k and global, concatenation, flatten / reshape) bit-exact across the STE twin, the integer
reference and every TVM lowering on this host: NCHW, each blocked scheme as plain loops, the AVX2 hand
schedule natively and VNNI natively where the CPU has it. The Arm schemes on the emulated Pi:
tests/test_new_ops_arm.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from op_models import SUPPORTED_MODELS, build
from tvm import relax

from harness.backend.cpu import compile_fast
from harness.backend.schemes import SCHEMES
from harness.lower import lower_integer, lower_integer_for, lower_integer_nchwc
from harness.profile import resolve
from laaq.importer import import_model
from laaq.quant.integer import add_int, conv2d_int, pool_int, run_integer
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import calibrate, quantize_graph, quantize_input
from laaq.quant.twin import Twin
from laaq.search import Budget, CalibrationRecipe, search_plan

HOST = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
HOST_HAS_VNNI = "avx512_vnni" in Path("/proc/cpuinfo").read_text()
SHAPE = (1, 8, 8)


def _run(ex, x: np.ndarray) -> np.ndarray:
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def mixed_qgraph(model: torch.nn.Module, shape=SHAPE, bits=(8, 4, 6, 3, 5, 2, 7)):
    """The model's quantized graph under a plan that mixes every width (so every narrower scheme is used)."""
    graph = import_model(model, shape)
    plan = QuantPlan({n.name: LayerSetting(bits[i % len(bits)], 1.0 - 0.1 * (i % 3))
                      for i, n in enumerate(graph.weighted())})
    return quantize_graph(graph, plan, torch.rand(64, *shape, generator=torch.Generator().manual_seed(1)))


@pytest.fixture(scope="module", params=list(SUPPORTED_MODELS))
def case(request):
    qg = mixed_qgraph(build(request.param))
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(2))
    xq = quantize_input(x).numpy()
    return request.param, qg, x, xq, run_integer(qg, xq)


def test_twin_equals_reference(case) -> None:
    _, qg, x, _, ref = case
    assert ref.dtype == np.int32
    _, acc = Twin(qg).forward_int(x)
    assert np.array_equal(acc.numpy(), ref)
    x2 = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(Twin(qg)(x2).logsumexp(1).sum(), x2)
    assert g.abs().sum() > 0, "the STE twin must pass a gradient through every new op"


def test_nchw_equals_reference(case) -> None:
    _, qg, _, xq, ref = case
    mod = lower_integer(qg, len(xq))
    assert "float" not in mod.script(), "the integer graph must not contain float tensors or casts"
    assert np.array_equal(_run(tvm.compile(mod, target=HOST), xq), ref)


@pytest.mark.parametrize("scheme", list(SCHEMES.values()), ids=list(SCHEMES))
def test_blocked_schemes_equal_reference(case, scheme) -> None:
    """Layouts, padded channels, stored offsets (VNNI, AVX2-u8 and Arm) of every scheme, as plain loops here."""
    _, qg, _, xq, ref = case
    assert np.array_equal(_run(tvm.compile(lower_integer_nchwc(qg, len(xq), scheme), target=HOST), xq), ref)


@pytest.mark.parametrize("target", ["x86-avx2", "x86-vnni"])
def test_native_hand_schedule_equals_reference(case, target: str) -> None:
    """The portable x86 targets' own paths (AVX2 vpmaddwd / vpmaddubsw hand schedule; VNNI where this CPU has
    it); the host-native `x86` resolves to one of the two."""
    if target == "x86-vnni" and not HOST_HAS_VNNI:
        pytest.skip("this CPU has no AVX-512 VNNI")
    _, qg, _, xq, ref = case
    profile = resolve(target)
    ex = compile_fast(lower_integer_for(qg, len(xq), profile), profile.tvm_target, scheme=profile.scheme)
    assert np.array_equal(_run(ex, xq), ref)


def test_grouped_conv_reference_is_per_group() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 6, 5, 5))
    w = rng.integers(-127, 128, (9, 2, 3, 3)).astype(np.int8)
    got = conv2d_int(x, w, 2, 1, groups=3)
    want = np.concatenate([conv2d_int(x[:, 2 * g:2 * g + 2], w[3 * g:3 * g + 3], 2, 1) for g in range(3)], axis=1)
    assert np.array_equal(got, want)


def test_pool_and_add_reference_extremes() -> None:
    """Max pool over signed codes with padding: the padding never wins, even when every value is −128; sums
    of 255s; an add at the clamp bounds."""
    x = np.full((1, 2, 3, 3), -128, dtype=np.int64)
    assert (pool_int(x, "max", 3, 2, 1) == -128).all()
    assert (pool_int(np.full((1, 1, 4, 4), 255), "sum", 2, 2, 0) == 4 * 255).all()
    a, b = np.array([255, 0, 200]), np.array([255, 0, 100])
    out = add_int(a, b, np.array([2**30, 2**30]), 30, 0, 255)  # (a + b) at scale 1: saturates at 255
    assert out.tolist() == [255, 0, 255]


def test_relu6_is_the_quantized_output_range() -> None:
    """ReLU6 needs no op of its own: the float output never exceeds 6, so the scale is at most 6/255 and the
    uint8 clamp is the upper bound; a saturated input lands exactly on code 255 = 6.0."""
    model = build("depthwise")
    graph = import_model(model, SHAPE)
    x = torch.rand(32, *SHAPE) * 50  # large inputs: every ReLU6 saturates somewhere
    scales = calibrate(graph, x)
    relu6 = [n for n in graph.nodes if n.act_max == 6.0]
    assert relu6 and all(scales[n.name] <= 6.0 / 255 + 1e-12 for n in relu6)
    assert any(abs(scales[n.name] - 6.0 / 255) < 1e-12 for n in relu6)


def test_search_and_baselines_run_per_node_on_new_ops() -> None:
    """LAAQ (tail gains, injected errors, norm ratios with grouped convs) and every baseline on a depthwise model."""
    model = build("depthwise")
    graph = import_model(model, SHAPE)
    x = torch.rand(48, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (48,), generator=torch.Generator().manual_seed(0))
    calib = CalibrationRecipe(samples=32, attack_steps=3).make(graph, x, y, 0.1, 0, model=model)
    names = {n.name for n in graph.weighted()}
    for method in ("laaq", "uniform", "mse", "sensitivity", "hessian", "random"):
        plan = search_plan(method, graph, calib, Budget(avg_bits=5.0))
        assert set(plan.layers) == names, method


def test_layer_latency_table_for_new_ops(private_cache) -> None:
    """``--layer-times`` / ``--latency-budget``: each layer of a depthwise model alone, as it sits in the model."""
    from harness.devices import open_device
    from harness.layer_latency import layer_table
    from harness.measure import LatencyProtocol

    graph = import_model(build("depthwise"), SHAPE)
    x86 = resolve("x86")
    with open_device(x86, progress=False) as session:
        table = layer_table(graph, x86, session, (4, 8), proto=LatencyProtocol(1, 2, 2))
    assert {t.layer for t in table} == {n.name for n in graph.weighted()}
    assert all(t.median_ms > 0 for t in table)


def test_channel_switched_off_by_batch_norm_keeps_int32_exact() -> None:
    """A BN-folded channel with ~0 weights and a finite bias (γ → 0) would need a bias beyond int32 at its tiny
    weight scale; its scale is raised instead, and the extremes stay exact everywhere."""
    from laaq.graph import Graph, Node

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32) * 0.3
    w[2] = 1e-12  # switched off
    b = np.full(6, 0.5, np.float32)
    graph = Graph([Node("c", "conv", ["input"], w, b, 1, 1, relu=True, act_max=6.0), Node("f", "flatten", ["c"]),
                   Node("fc", "dense", ["f"], rng.standard_normal((10, 6 * 64)).astype(np.float32) * 0.05,
                        np.zeros(10, np.float32))], SHAPE, 10)
    qg = quantize_graph(graph, QuantPlan.uniform(["c", "fc"], 8), torch.rand(16, *SHAPE))
    assert abs(int(qg.qnodes["c"].b_q[2])) <= 2**31 - 1 - 9 * 255 * 127
    xq = np.stack([np.full(SHAPE, 255, np.uint8), np.zeros(SHAPE, np.uint8)])
    ref = run_integer(qg, xq)  # raises OverflowError if any accumulator left int32
    assert np.array_equal(Twin(qg).forward_int(torch.as_tensor(xq / 255.0, dtype=torch.float32))[1].numpy(), ref)
    assert np.array_equal(_run(tvm.compile(lower_integer(qg, 2), target=HOST), xq), ref)
