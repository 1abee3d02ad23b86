"""The LAAQ metric: how much a layer's quantization setting moves the logits on adversarial inputs.

Derivation (full version in ``docs/method.md``). Write the float network as f and the quantized one
as f_q. For an adversarial input x' = x + δ,

    f_q(x') − f(x)  =  [f_q(x') − f(x')]  +  [f(x') − f(x)].

The second bracket does not depend on the plan. The first, to first order in the weight errors
ΔW_l = W_l − Q(W_l), is a sum over layers of the error each layer *injects*, e_l = ΔW_l ∗ a_{l−1}(x'),
carried to the logits by the tail of the network after layer l:

    f_q(x') − f(x')  ≈  Σ_l J_l(x') · e_l(x'),       J_l = ∂ logits / ∂ (pre-activation of layer l).

The textbook Lipschitz bound replaces ‖J_l‖ by the product of the later layers' operator norms.
That product is loose by orders of magnitude (ReLUs switch most paths off; consecutive layers'
top singular directions do not align) and the looseness differs per layer, so it inflates early
layers' weights ~100× and starves the classifier (measured; see the docs). We keep the Lipschitz
structure but estimate each factor where the attack actually puts the network:

* ``e_l`` is the *actual* error of setting s (bits and clip) on the layer's inputs under attack;
* the tail gain is the *local* Lipschitz constant of the tail, ‖J_l(x')‖₂ by power iteration on
  the data (mode ``"lipschitz"``), or the exact first-order propagation J_l·e_l (mode ``"jvp"``);
* the attack amplification ∏_l L_l(Q(W_l))·‖δ‖ enters in the log domain, where the product
  becomes a sum: ‖f_q(x') − f_q(x)‖² ≈ ‖f(x') − f(x)‖² · (1 + 2 Σ_l log(L_l(Q)/L_l(W))), so each
  layer adds ``2·D²·log(L_l(Q_s)/L_l(W))`` with D² the mean squared adversarial logit shift.

Independent rounding errors of different layers are uncorrelated, so squared norms add and the cost
is separable: cost[l][s] = E‖J_l e_l(s)‖² + λ·2·D²·log(L_l(Q_s)/L_l(W)), solved exactly by the
knapsack solver and then refined with the exact (non-separable) loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from laaq.graph import Graph, Node, apply_node, linear_part
from laaq.lipschitz import conv_operator_norms, conv_top_singular, dense_operator_norm
from laaq.quant.plan import LayerSetting
from laaq.quant.quantizers import dequantize_weight


def forward(graph: Graph, x: torch.Tensor, weights: Mapping[str, torch.Tensor] | None = None,
            inject: Mapping[str, torch.Tensor] | None = None,
            keep: bool = False, prefix: Mapping[str, torch.Tensor] | None = None
            ) -> torch.Tensor | dict[str, torch.Tensor]:
    """Float forward pass with optional replaced weights and additive injections.

    ``inject[name]`` is added to layer ``name``'s linear output (before residual and ReLU) — the point
    where a weight error enters. Differentiable in ``x``, the weights and the injections, so one
    executor serves attacks, Jacobian products and Hessian traces for any graph. ``prefix``: outputs of
    nodes already computed on ``x`` (:func:`prefix_env`) — they are taken as given, so a pass that only
    changes a layer's tail runs the tail alone.
    """
    env: dict[str, torch.Tensor] = dict(prefix) if prefix is not None else {"input": x}
    for n in graph.nodes:
        if n.name in env:
            continue
        w = b = None
        if n.has_weight:
            w = weights[n.name] if weights is not None and n.name in weights else torch.as_tensor(n.weight)
            b = torch.as_tensor(n.bias)
        inj = inject.get(n.name) if inject is not None else None
        env[n.name] = apply_node(n, [env[i] for i in n.inputs], env[n.residual] if n.residual else None, w, b, inj)
    return env if keep else env[graph.output]


def layer_inputs(graph: Graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input a_{l−1} of every weighted layer on ``x`` (float network)."""
    with torch.no_grad():
        env = forward(graph, x, keep=True)
    assert isinstance(env, dict)
    return {n.name: env[n.inputs[0]] for n in graph.weighted()}


def prefix_env(graph: Graph, env: Mapping[str, torch.Tensor], layer: str) -> dict[str, torch.Tensor]:
    """The input and every node before ``layer`` (in the graph's order) from a full pass's ``env``: what an
    injection at ``layer`` cannot change. Why: the tail gains run ~8 forward passes per layer; recomputing the
    prefix each time made the metric quadratic in depth (53 layers of MobileNetV2)."""
    out = {"input": env["input"]}
    for n in graph.nodes:
        if n.name == layer:
            return out
        out[n.name] = env[n.name]
    raise KeyError(layer)


def injected_error(node: Node, a_in: torch.Tensor, setting: LayerSetting) -> torch.Tensor:
    """e_l = (W − Q(W)) applied to the layer's actual inputs: the error this setting injects."""
    dw = torch.as_tensor(node.weight - dequantize_weight(node.weight, setting))
    with torch.no_grad():
        return linear_part(node, a_in, dw, None)


def _pre_shape(graph: Graph, node: Node) -> tuple[int, ...]:
    return graph.shapes[node.name]


def tail_jvp(graph: Graph, x: torch.Tensor, layer: str, v: torch.Tensor,
             prefix: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """J_l(x)·v: first-order logit change when ``v`` is added to layer ``layer``'s linear output.

    Forward-mode AD (dual numbers), so one pass per direction and no functorch import. ``prefix``: the
    nodes before ``layer`` on ``x`` (:func:`prefix_env`), so only the tail runs.
    """
    with fwAD.dual_level():
        inj = fwAD.make_dual(torch.zeros_like(v), v)
        out = forward(graph, x, inject={layer: inj}, prefix=prefix)
        assert isinstance(out, torch.Tensor)
        return fwAD.unpack_dual(out).tangent.detach()


def local_tail_lipschitz(graph: Graph, x: torch.Tensor, layer: str, iters: int = 8, seed: int = 0,
                         prefix: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-sample ‖J_l(x)‖₂ (local Lipschitz constant of the tail), by power iteration with jvp/vjp.

    The network is piecewise linear, so at a fixed input the tail *is* a linear map (ReLU masks
    frozen) and this is its exact operator norm there — much smaller than the product of global
    layer norms, and with the right relative size across layers.
    """
    node = graph.node(layer)
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn((len(x), *_pre_shape(graph, node)), generator=gen)
    zero = torch.zeros_like(v, requires_grad=True)
    out = forward(graph, x, inject={layer: zero}, prefix=prefix)
    assert isinstance(out, torch.Tensor)
    sig = torch.zeros(len(x))
    for _ in range(iters):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).reshape((-1,) + (1,) * (v.ndim - 1))
        u = tail_jvp(graph, x, layer, v, prefix)
        sig = u.norm(dim=1)
        (v,) = torch.autograd.grad(out, zero, grad_outputs=u, retain_graph=True)
    return sig


def quantized_norm_ratio(graph: Graph, node: Node, settings: list[LayerSetting],
                         iters: int = 60) -> dict[LayerSetting, float]:
    """L_l(Q_s(W))/L_l(W) for each setting (exact operator norms, warm-started at W's top vector)."""
    if node.op == "dense":
        base = dense_operator_norm(node.weight)
        return {s: dense_operator_norm(dequantize_weight(node.weight, s)) / base for s in settings}
    shape = graph.input_shape_of(node)
    base, v = conv_top_singular(node.weight, shape, node.stride, node.padding, tol=1e-6,  # type: ignore[arg-type]
                                groups=node.groups)
    qs = [dequantize_weight(node.weight, s) for s in settings]
    norms = conv_operator_norms(qs, shape, node.stride, node.padding, iters=iters, v0=v,  # type: ignore[arg-type]
                                groups=node.groups)
    return {s: q / base for s, q in zip(settings, norms, strict=True)}


SEARCH_MAC_BUDGET = 1e13  # multiply-accumulates the per-layer tail gains may spend (a few minutes on 2 cores)
MIN_SEARCH_IMAGES = 8
POWER_ITERS = 8  # local_tail_lipschitz's default


def search_images(graph: Graph, n: int) -> int:
    """How many of the ``n`` calibration images the LAAQ metric uses: all of them unless the tail gains would
    cost more than :data:`SEARCH_MAC_BUDGET` (each layer: ``POWER_ITERS`` JVP+VJP pairs, ~4 forward passes each),
    then as many as the budget buys, at least :data:`MIN_SEARCH_IMAGES`.

    Why: the gains are per-image power iterations through each layer's tail. VGG8/MNIST needs ~1e9 MACs per
    image and ResNet-20 at 32×32 ~3e10: both keep all 256 images. MobileNetV2-1.0 at 224×224 needs ~5e11
    (53 layers × 300 M MACs × 32), hours on 2 cores for 256 images; a subset keeps the method, at a noisier
    estimate (the plan's ``search_images`` records how many were used)."""
    layers = graph.weighted()
    per_image = sum(graph.macs(nd) for nd in layers) * len(layers) * POWER_ITERS * 4
    return min(n, max(MIN_SEARCH_IMAGES, int(SEARCH_MAC_BUDGET // max(1, per_image))))


def laaq_costs(graph: Graph, x_clean: torch.Tensor, x_adv: torch.Tensor, settings: list[LayerSetting],
               mode: str = "lipschitz", attack_weight: float = 0.0,
               seed: int = 0) -> dict[str, dict[LayerSetting, float]]:
    """cost[l][s] = E‖J_l e_l(s)‖² + attack_weight·2·D²·log(L_l(Q_s)/L_l(W)) on adversarial inputs.

    ``mode="lipschitz"`` bounds ‖J_l e‖ by the local tail Lipschitz constant times ‖e‖ (per sample);
    ``mode="jvp"`` propagates each error exactly to first order (costlier: one JVP per setting).
    Large models use a subset of the images (:func:`search_images`), in batches within the memory budget
    (:mod:`laaq.memory`); the expectations are per-image sums over the batches, so one batch (every small
    model) gives what one pass gave.
    """
    from laaq.memory import backward_batch, spans

    if mode not in ("lipschitz", "jvp"):
        raise ValueError(f"unknown LAAQ metric mode {mode!r}; use 'lipschitz' or 'jvp'")
    n = search_images(graph, len(x_adv))
    x_clean, x_adv = x_clean[:n], x_adv[:n]
    # the tail's graph is kept across the power iteration, and forward-mode duals ride beside it: half the budget
    batch = max(1, backward_batch(lambda z: forward(graph, z), x_adv[:1], n) // 2) if n else 1
    layers = graph.weighted()
    ratios = {nd.name: quantized_norm_ratio(graph, nd, settings) if attack_weight else {s: 1.0 for s in settings}
              for nd in layers}
    sums = {nd.name: dict.fromkeys(settings, 0.0) for nd in layers}
    d2_sum = 0.0
    for sl in spans(n, batch):
        xa = x_adv[sl]
        with torch.no_grad():
            env = forward(graph, xa, keep=True)
            assert isinstance(env, dict)
            d2_sum += float(((env[graph.output] - forward(graph, x_clean[sl])) ** 2).sum())  # type: ignore[operator]
        for node in layers:
            prefix = prefix_env(graph, env, node.name)
            gain = local_tail_lipschitz(graph, xa, node.name, seed=seed, prefix=prefix) if mode == "lipschitz" \
                else None
            for s in settings:
                e = injected_error(node, env[node.inputs[0]], s)
                if gain is not None:
                    sums[node.name][s] += float(((gain * e.flatten(1).norm(dim=1)) ** 2).sum())
                else:
                    with torch.no_grad():
                        sums[node.name][s] += float((tail_jvp(graph, xa, node.name, e, prefix) ** 2).sum())
        del env
    d2 = d2_sum / max(1, n)
    return {name: {s: total / max(1, n) + attack_weight * 2.0 * d2 * float(np.log(max(ratios[name][s], 1e-12)))
                   for s, total in row.items()} for name, row in sums.items()}


def norm_product_costs(graph: Graph, x_adv: torch.Tensor, settings: list[LayerSetting]
                       ) -> dict[str, dict[LayerSetting, float]]:
    """Bound (1) of docs/method.md with exact operator norms: ∏_{k>l}‖W_k‖₂ · ‖W_l − Q_s(W_l)‖₂ · rms‖a_{l−1}(x')‖.

    Defined for a chain of layers (no residual additions): the tail's Lipschitz bound is the product of the
    later layers' norms (ReLU, flatten are 1-Lipschitz). As a search method (``norm-product``) it is the LAAQ
    variant whose cost ranked random plans best in the metric-validity study (docs/method.md), so the experiment
    runs it beside ``laaq`` to tell the data-aware tail gain from the textbook bound."""
    if any(n.residual for n in graph.nodes):
        raise ValueError("norm-product is defined for layer chains only (this graph has residual additions)")
    weighted = graph.weighted()
    inputs = layer_inputs(graph, x_adv)
    own: dict[str, float] = {}
    err: dict[str, dict[LayerSetting, float]] = {}
    for node in weighted:
        diffs = [node.weight - dequantize_weight(node.weight, s) for s in settings]
        if node.op == "dense":
            own[node.name] = dense_operator_norm(node.weight)
            norms = [dense_operator_norm(d) for d in diffs]
        else:
            shape = graph.input_shape_of(node)
            own[node.name] = conv_operator_norms([node.weight], shape, node.stride, node.padding, iters=300,  # type: ignore[arg-type]
                                                 tol=1e-7)[0]
            norms = conv_operator_norms(diffs, shape, node.stride, node.padding, iters=100)  # type: ignore[arg-type]
        err[node.name] = dict(zip(settings, norms, strict=True))
    out: dict[str, dict[LayerSetting, float]] = {}
    for i, node in enumerate(weighted):
        tail = float(np.prod([own[m.name] for m in weighted[i + 1:]])) if i + 1 < len(weighted) else 1.0
        a = float(inputs[node.name].flatten(1).norm(dim=1).pow(2).mean().sqrt())
        out[node.name] = {s: tail * err[node.name][s] * a for s in settings}
    return out


def dequantized_weights(graph: Graph, layers: Mapping[str, LayerSetting]) -> dict[str, torch.Tensor]:
    """Q(W) of every weighted layer under an allocation (float tensors for :func:`forward`)."""
    return {n.name: torch.as_tensor(dequantize_weight(n.weight, layers[n.name])) for n in graph.weighted()}


class TailCache:
    """The last :func:`adversarial_loss` pass on fixed inputs: every node's output and the settings it used.

    Why: refinement scores up to 600 allocations that each differ from the current one in one layer; a pass
    only needs to recompute from the first layer whose setting differs from the cached pass's (the outputs
    before it are the same numbers), which halves the work on average and more for late layers. Results are
    identical to a full pass."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.layers: dict[str, LayerSetting] = {}
        self.env: dict[str, torch.Tensor] = {}

    def prefix(self, graph: Graph, x: torch.Tensor, layers: Mapping[str, LayerSetting]) -> dict[str, torch.Tensor]:
        if self.x is not x or not self.env:
            return {"input": x}
        first = next((n.name for n in graph.weighted() if layers[n.name] != self.layers.get(n.name)), None)
        return dict(self.env) if first is None else prefix_env(graph, self.env, first)


def adversarial_loss(graph: Graph, layers: Mapping[str, LayerSetting], x_adv: torch.Tensor, y: torch.Tensor,
                     cache: TailCache | None = None) -> float:
    """The exact (non-separable) refinement metric: cross-entropy of the weight-quantized network on
    the adversarial calibration inputs (``cache``: reuse the previous pass's outputs before the first
    layer whose setting changed)."""
    with torch.no_grad():
        if cache is None:
            logits = forward(graph, x_adv, weights=dequantized_weights(graph, layers))
        else:
            prefix = cache.prefix(graph, x_adv, layers)
            tail = {n.name: torch.as_tensor(dequantize_weight(n.weight, layers[n.name]))
                    for n in graph.weighted() if n.name not in prefix}
            env = forward(graph, x_adv, weights=tail, keep=True, prefix=prefix)
            assert isinstance(env, dict)
            cache.x, cache.layers, cache.env = x_adv, dict(layers), env
            logits = env[graph.output]
        assert isinstance(logits, torch.Tensor)
        return float(F.cross_entropy(logits, y))
