"""Quantizers and the integer parameters of a quantized graph.

Scheme (the one the integer reference, the twin and the TVM module all execute):

* input: ``uint8 q = clamp(floor(x·255 + 0.5), 0, 255)``, scale 1/255 (images live in [0, 1]);
* weights: symmetric per output channel, ``bits`` ∈ [2, 8] (per layer, or per output-channel group), stored as int8;
* bias: int32 at scale ``s_in · s_w[o]``;
* activations: 8-bit per tensor, zero point 0 — uint8 after a ReLU, int8 otherwise;
* requantization: ``out = clamp((acc·M[o] + q_res·M_res + 2^(sh−1)) >> sh, lo, hi)`` in int64, with
  ``M`` < 2^31 a per-channel fixed-point multiplier and ``sh`` one shift per layer — no floating
  point between layers, and exact by construction on every backend;
* pooling: ``gap``/``avgpool`` sum their window in int64 and requantize with one multiplier
  ``s_in / (window · s_out)``; ``maxpool`` and ``flatten`` keep their input's codes and scale;
* ``add`` / ``cat``: each input ``i`` is rescaled to the output's scale with its own per-tensor
  multiplier ``M_i ≈ s_i / s_out`` (one shared shift): ``add`` = ``clamp((Σ_i q_i·M_i + 2^(sh−1)) >> sh)``,
  ``cat`` = the channel concatenation of ``clamp((q_i·M_i + 2^(sh−1)) >> sh)``;
* ReLU6 / clamp(0, m) is the unsigned output range itself: the float output never exceeds ``m``, so its
  calibrated scale is at most ``m/255`` and the uint8 clamp ``[0, 255]`` realizes the upper bound;
* the last layer returns its int32 accumulator; logits = acc · s_in · s_w[o] (dequantized once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from laaq.graph import PASS_THROUGH, Graph, Node, infer_shapes, run_float
from laaq.memory import forward_batch, spans
from laaq.quant.plan import LayerSetting, QuantPlan

INPUT_SCALE = 1.0 / 255.0


def qmax(bits: int | np.ndarray) -> int | np.ndarray:
    """Largest magnitude of a symmetric signed integer of ``bits`` bits (e.g. 127 for 8); elementwise on arrays."""
    return 2 ** (bits - 1) - 1


def weight_scales(w: np.ndarray, setting: LayerSetting) -> np.ndarray:
    """Per-output-channel scales: clip · max|W_o| / qmax(bits) with each channel's own bits and clip
    (grouped settings); never zero (dead channels get 1)."""
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
    bits, clips = setting.per_channel(w.shape[0])
    s = clips * flat / qmax(bits)
    return np.where(s > 0, s, 1.0)


def quantize_weight(w: np.ndarray, setting: LayerSetting,
                    min_scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer weights (int8 storage, values within ±qmax(bits)) and their per-channel scales
    (each at least ``min_scale``, see :func:`bias_scale_floor`)."""
    s = weight_scales(w, setting)
    if min_scale is not None:
        s = np.maximum(s, min_scale)
    shape = (-1,) + (1,) * (w.ndim - 1)
    lim = qmax(setting.per_channel(w.shape[0])[0]).reshape(shape)
    q = np.clip(np.floor(w / s.reshape(shape) + 0.5), -lim, lim)
    return q.astype(np.int8), s


def dequantize_weight(w: np.ndarray, setting: LayerSetting) -> np.ndarray:
    """Q(W) in float: what the quantized layer actually multiplies by (for metrics and norms)."""
    q, s = quantize_weight(w, setting)
    return (q.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)


def bias_scale_floor(bias: np.ndarray, s_in: float, fan_in: int, bits: int) -> np.ndarray:
    """Smallest per-channel weight scale whose int32 bias still leaves room for the accumulator.

    Why: the bias lives in int32 at scale ``s_in·s_w[o]``. A channel that batch-norm all but switched off
    (γ → 0: common in trained MobileNets) has tiny weights, hence a tiny ``s_w[o]``, while its folded bias
    ``β − μγ/σ`` stays finite — so ``b/(s_in·s_w)`` overflows int32. Raising that channel's scale until
    ``|b_q| + fan_in·255·qmax ≤ 2^31 − 1`` keeps every sum exact. Only channels whose whole weight
    contribution is a small fraction of their bias are affected (they get a coarser grid); the others'
    scales are above their floor and unchanged.
    """
    room = (2**31 - 1) - fan_in * 255 * qmax(bits)
    if room <= 0:
        raise ValueError(f"a layer with fan-in {fan_in} at {bits} bits can overflow its int32 accumulator")
    peak = np.abs(bias.astype(np.float64)).reshape(len(bias), -1).max(1)  # a bias map: its largest entry
    return peak / (s_in * (room - 1))  # − 1: rounding of b/(s_in·s_w) stays inside


def quantize_input(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → uint8 codes; the single definition used by every backend."""
    return torch.clamp(torch.floor(x.float() * 255.0 + 0.5), 0, 255).to(torch.uint8)


def fixed_point(multipliers: np.ndarray) -> tuple[np.ndarray, int]:
    """Real multipliers → (int64 M < 2^31, shift) with m ≈ M / 2^shift, one shift for all.

    A shared shift keeps the requantization a single tensor op per layer; the largest multiplier
    gets 31 significant bits, the others at least as many as their ratio to it allows.
    """
    m = np.asarray(multipliers, dtype=np.float64)
    top = float(m.max())
    if not (top > 0 and math.isfinite(top)):
        raise ValueError(f"requantization multipliers must be finite and positive, got max {top}")
    exp = math.floor(math.log2(top)) + 1  # top < 2^exp
    shift = 31 - exp
    if shift < 1:
        raise ValueError(f"requantization multiplier {top} too large (needs a shift < 1)")
    if shift > 62:
        raise ValueError(f"requantization multiplier {top} too small (shift {shift} > 62)")
    M = np.minimum(np.floor(m * 2.0**shift + 0.5), 2**31 - 1).astype(np.int64)
    return M, shift


@dataclass
class QNode:
    """Integer parameters of one node; float scales are kept only to dequantize logits/report."""

    node: Node
    out_signed: bool  # int8 output (no ReLU) vs uint8
    s_in: float
    s_out: float  # for the final layer: unused (logits are dequantized per channel)
    w_q: np.ndarray | None = None  # int8
    w_scale: np.ndarray | None = None  # float64 [O]
    b_q: np.ndarray | None = None  # int32 [O], or [O, OH, OW] (a conv's bias map, laaq.graph)
    mult: np.ndarray | None = None  # int64 [O] (gap: [1])
    shift: int = 0
    res_mult: int = 0  # residual multiplier (same shift)
    s_res: float = 0.0
    in_mults: np.ndarray | None = None  # add / cat: int64 per-tensor multiplier of each input (same shift)
    setting: LayerSetting | None = None
    final: bool = False

    @property
    def lo(self) -> int:
        return -128 if self.out_signed else 0

    @property
    def hi(self) -> int:
        return 127 if self.out_signed else 255


@dataclass
class QuantizedGraph:
    """A graph with integer weights, biases and requantization constants, ready for any backend."""

    graph: Graph
    plan: QuantPlan
    qnodes: dict[str, QNode]
    act_scales: dict[str, float]

    @property
    def output(self) -> QNode:
        return self.qnodes[self.graph.output]

    def logit_scale(self) -> np.ndarray:
        """Per-class factor turning the final int32 accumulator into float logits."""
        q = self.output
        return q.s_in * q.w_scale


def calibrate(graph: Graph, calib_x: torch.Tensor, percentile: float = 100.0) -> dict[str, float]:
    """Activation scales per node from the float model's ranges on calibration inputs.

    ``percentile`` < 100 clips rare outliers; max (100) is the default because the calibration set
    includes adversarial inputs in our searches, whose large activations should stay representable.
    """
    # in batches that keep every node's output within the memory budget (one batch for small models); the
    # running max, and the first 2,000,000 values of each node for a percentile, as over the whole set
    per_image = sum(int(np.prod(s)) for s in infer_shapes(graph).values())
    peak: dict[str, torch.Tensor] = {}
    head: dict[str, list[torch.Tensor]] = {}
    for sl in spans(len(calib_x), forward_batch(per_image, len(calib_x))):
        with torch.no_grad():
            outs = run_float(graph, calib_x[sl].float(), keep_all=True)
        for n in graph.nodes:
            if n.op in PASS_THROUGH:
                continue
            a = outs[n.name].abs().flatten().double()
            peak[n.name] = torch.maximum(peak[n.name], a.max()) if n.name in peak else a.max()
            if percentile < 100 and sum(len(t) for t in head.setdefault(n.name, [])) < 2_000_000:
                head[n.name].append(a)
        del outs
    scales: dict[str, float] = {"input": INPUT_SCALE}
    for n in graph.nodes:
        if n.op in PASS_THROUGH:
            continue
        r = float(peak[n.name]) if percentile >= 100 else \
            float(torch.quantile(torch.cat(head[n.name])[:2_000_000], percentile / 100))
        if n.act_max is not None:  # ReLU6: the quantized range is at most [0, act_max]
            r = min(r, n.act_max)
        signed = not n.relu
        scales[n.name] = max(r, 1e-8) / (127.0 if signed else 255.0)
    return scales


def quantize_graph(graph: Graph, plan: QuantPlan, calib_x: torch.Tensor,
                   act_scales: dict[str, float] | None = None) -> QuantizedGraph:
    """Integer parameters for every node from a plan and calibration data (or given scales)."""
    plan.check_covers([n.name for n in graph.weighted()])
    scales = act_scales or calibrate(graph, calib_x)
    src_scale: dict[str, float] = {"input": INPUT_SCALE}
    src_signed: dict[str, bool] = {"input": False}
    qnodes: dict[str, QNode] = {}
    for i, n in enumerate(graph.nodes):
        s_in = src_scale[n.inputs[0]]
        final = i == len(graph.nodes) - 1
        if n.op in PASS_THROUGH:
            if final:
                raise ValueError("the last node must be a dense or conv layer (its accumulator is the output)")
            src_scale[n.name], src_signed[n.name] = s_in, src_signed[n.inputs[0]]
            qnodes[n.name] = QNode(n, src_signed[n.inputs[0]], s_in, s_in)
            continue
        s_out = scales[n.name]
        signed = not n.relu
        q = QNode(n, signed, s_in, s_out, final=final)
        if n.has_weight:
            if not np.all(np.isfinite(n.weight)) or not np.all(np.isfinite(n.bias)):
                raise ValueError(f"layer {n.name!r} has NaN or infinite weights; refusing to quantize")
            setting = plan.setting(n.name)
            q.setting = setting
            fan_in = int(np.prod(n.weight.shape[1:]))
            q.w_q, q.w_scale = quantize_weight(n.weight, setting, bias_scale_floor(n.bias, s_in, fan_in, setting.bits))
            acc_scale = s_in * q.w_scale
            bq = np.floor(n.bias.astype(np.float64) / acc_scale.reshape((-1,) + (1,) * (n.bias.ndim - 1)) + 0.5)
            q.b_q = np.clip(bq, -(2**31) + 1, 2**31 - 1).astype(np.int32)
            if not final:
                reals = acc_scale / s_out
                if n.residual:
                    q.s_res = src_scale[n.residual]
                    reals = np.concatenate([reals, [q.s_res / s_out]])
                M, q.shift = fixed_point(reals)
                if n.residual:
                    q.mult, q.res_mult = M[:-1], int(M[-1])
                else:
                    q.mult = M
        elif n.op in ("gap", "avgpool"):
            window = int(np.prod(graph.input_shape_of(n)[1:])) if n.op == "gap" else n.kernel**2
            q.mult, q.shift = fixed_point(np.array([s_in / (window * s_out)]))
        elif n.op in ("add", "cat"):
            q.in_mults, q.shift = fixed_point(np.array([src_scale[i] / s_out for i in n.inputs]))
        if final and not n.has_weight:
            raise ValueError("the last node must be a dense or conv layer (its accumulator is the output)")
        qnodes[n.name] = q
        src_scale[n.name], src_signed[n.name] = s_out, signed
    return QuantizedGraph(graph, plan, qnodes, scales)
