"""The heart of "a real integer pipeline": twin == integer reference == TVM artefact, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from harness.lower import lower_float, lower_integer
from laaq.graph import run_float
from laaq.models import ResNet20, randomize_bn_stats
from laaq.quant.integer import run_integer
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input
from laaq.quant.twin import Twin

X86 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})


def _run_tvm(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target=X86), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _mixed_plan(graph) -> QuantPlan:
    bits = [2, 3, 4, 5, 6, 8]
    return QuantPlan({n.name: LayerSetting(bits[i % 6], 1.0 - 0.1 * (i % 4)) for i, n in enumerate(graph.weighted())})


def test_bn_folding_is_exact(tiny_model, digits) -> None:
    x = digits.x_test[:64]
    with torch.no_grad():
        assert torch.allclose(run_float(tiny_model.to_graph(), x), tiny_model(x), atol=1e-5)


def test_twin_reference_tvm_agree_on_eval_set(tiny_model, digits) -> None:
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, _mixed_plan(graph), digits.x_train[:128])
    x = digits.x_test  # the whole eval split
    xq = quantize_input(x).numpy()
    ref = run_integer(qg, xq)
    assert ref.dtype == np.int32
    _, twin_acc = Twin(qg).forward_int(x)
    assert np.array_equal(twin_acc.numpy(), ref)
    out = _run_tvm(lower_integer(qg, len(x)), xq)
    assert out.dtype == np.int32 and np.array_equal(out, ref)


def _mixed_resnet(seed: int):
    """A 16×16 ResNet-20 with non-trivial batch-norm under a mixed 2–8-bit plan: residuals and every width."""
    torch.manual_seed(seed)
    model = ResNet20(image=16).eval()
    randomize_bn_stats(model)  # non-trivial BN: folding matters
    graph = model.to_graph()
    return quantize_graph(graph, _mixed_plan(graph), torch.rand(32, 3, 16, 16))


def test_random_inputs_and_resnet_residuals_exact() -> None:
    qg = _mixed_resnet(seed=0)
    assert any(n.residual for n in qg.graph.nodes)
    x = torch.rand(8, 3, 16, 16)
    xq = quantize_input(x).numpy()
    ref = run_integer(qg, xq)
    assert np.array_equal(Twin(qg).forward_int(x)[1].numpy(), ref)
    assert np.array_equal(_run_tvm(lower_integer(qg, 8), xq), ref)


def test_integer_module_has_no_float_arithmetic(tiny_model, digits) -> None:
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), digits.x_train[:64])
    text = lower_integer(qg, 1).script()
    assert "float" not in text, "the integer graph must not contain float tensors or casts"
    assert 'out_dtype="int32"' in text


def test_twin_gradient_is_useful(tiny_model, digits) -> None:
    """STE: the twin's input gradient is non-zero and aligned with the float model's."""
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), digits.x_train[:64])
    x = digits.x_test[:32].clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(Twin(qg)(x), digits.y_test[:32])
    (g_twin,) = torch.autograd.grad(loss, x)
    x2 = digits.x_test[:32].clone().requires_grad_(True)
    (g_float,) = torch.autograd.grad(torch.nn.functional.cross_entropy(tiny_model(x2), digits.y_test[:32]), x2)
    assert g_twin.abs().sum() > 0
    cos = torch.nn.functional.cosine_similarity(g_twin.flatten(), g_float.flatten(), dim=0)
    assert cos > 0.5


def test_float_artefact_matches_torch(tiny_model, digits) -> None:
    x = digits.x_test[:16]
    out = _run_tvm(lower_float(tiny_model, digits.input_shape, 16), x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(out, tiny_model(x).numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bits", [2, 8])
def test_extreme_bits_exact(tiny_model, digits, bits: int) -> None:
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], bits), digits.x_train[:64])
    x = torch.rand(4, *digits.input_shape)
    xq = quantize_input(x).numpy()
    assert np.array_equal(_run_tvm(lower_integer(qg, 4), xq), run_integer(qg, xq))


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="GPU-only: no CUDA device visible to torch"))]


@pytest.mark.parametrize("device", DEVICES)
def test_twin_stays_bit_exact_on_the_attack_device(device: str) -> None:
    """`--attack-device`: the twin moved with `.to(device)` (float32 exact paths on the CPU, float64 on a GPU)
    gives the integer reference's accumulators, and its gradient path still runs there."""
    qg = _mixed_resnet(seed=1)
    x = torch.rand(8, 3, 16, 16)
    ref = run_integer(qg, quantize_input(x).numpy())
    twin = Twin(qg).to(device)
    assert np.array_equal(twin.exact_acc(x.to(device)).cpu().numpy(), ref)
    xg = x.to(device).requires_grad_(True)
    logits, acc = twin.forward_int(xg)
    assert np.array_equal(acc.cpu().numpy(), ref)
    (g,) = torch.autograd.grad(logits.logsumexp(1).sum(), xg)
    assert g.device.type == device and torch.isfinite(g).all() and g.abs().sum() > 0


def test_twin_in_chunks_equals_one_batch() -> None:
    """A batch larger than the twin's chunk runs in chunks: the same exact accumulators and logits, and
    (up to float summation order) the same input gradient as one whole batch."""
    qg = _mixed_resnet(seed=1)
    x = torch.rand(23, 3, 16, 16)
    whole, chunked = Twin(qg), Twin(qg)
    whole.chunk, chunked.chunk = 64, 5  # 23 images: chunks of 5, the last one of 3
    assert np.array_equal(chunked.exact_acc(x).numpy(), whole.exact_acc(x).numpy())
    assert np.array_equal(chunked.exact_acc(x).numpy(), run_integer(qg, quantize_input(x).numpy()))
    grads = []
    for twin in (whole, chunked):
        xi = x.clone().requires_grad_(True)
        out = twin(xi)
        grads.append((out.detach(), torch.autograd.grad(out.square().sum(), [xi])[0]))
    assert torch.equal(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)
