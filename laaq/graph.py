"""A small, explicit layer graph: the one description of a network that every backend reads.

Why a graph of our own instead of walking ``nn.Module``s in each backend: the float executor, the
fake-quant twin, the integer reference and the TVM lowering must agree on *exactly* the same
computation (bit for bit for the integer ones). Folding batch-norm once, into this graph, and having
all four read it removes a whole class of "the backends disagree about the model" bugs. Graphs come
from :func:`laaq.importer.model_graph` (``torch.export`` of any supported ``nn.Module``).

Nodes are kept deliberately few:

* ``conv``    — 2-D convolution (+bias, ``groups``: grouped / depthwise), optionally fused with a
  residual input and/or an activation.
* ``dense``   — fully connected (+bias), optionally with an activation.
* ``gap``     — global average pool (NCHW → NC).
* ``avgpool`` — k×k average pool (divisor k², zero padding counted, as torch's default).
* ``maxpool`` — k×k max pool (padding never wins the max).
* ``add``     — element-wise sum of two activations (when it cannot be fused into a conv's residual).
* ``cat``     — concatenation along channels.
* ``flatten`` — NCHW → N(CHW).

A conv's bias is ``[O]``, or ``[O, OH, OW]`` — a *bias map* — when an input normalization ``(x − m)/s`` was
folded into it (:mod:`laaq.importer.translate`): the zero padding of the normalized input is padding with
``m`` in pixel units, so the folded bias differs at the borders; a map keeps the fold exact.

The activation of a node is ``relu`` (output ≥ 0, so it is quantized unsigned) with an optional upper
bound ``act_max`` (ReLU6 = ``relu`` + ``act_max=6``); on pooling and concatenation nodes ``relu`` marks
an output that is non-negative anyway (its inputs are), which is what makes it unsigned.
Quantization points are the outputs of every node except ``flatten`` and ``maxpool`` (which keep their
input's codes and scale) and the graph input. The last node's output is the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

OPS = ("conv", "dense", "gap", "avgpool", "maxpool", "add", "cat", "flatten")
#: ops that keep their input's codes and scale (no requantization of their own)
PASS_THROUGH = ("flatten", "maxpool")


@dataclass
class Node:
    """One layer. ``inputs[0]`` is the main input (``add``/``cat``: all inputs); ``residual`` (conv/dense)
    is added before the activation."""

    name: str
    op: str
    inputs: list[str]
    weight: np.ndarray | None = None  # conv: [O, I/groups, kh, kw]; dense: [O, I] (float32, BN folded)
    bias: np.ndarray | None = None  # [O]; conv only: [O, OH, OW] where a folded input normalization left borders
    stride: int = 1
    padding: int = 0
    relu: bool = False
    residual: str | None = None
    groups: int = 1  # conv: input and output channels split in this many independent groups
    kernel: int = 0  # avgpool / maxpool: window side
    act_max: float | None = None  # upper clamp of the activation (ReLU6: 6.0); only with relu

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r} in node {self.name!r}; expected one of {OPS}")
        if self.act_max is not None and not (self.relu and self.act_max > 0):
            raise ValueError(f"node {self.name!r}: act_max needs relu and a positive bound, got {self.act_max}")

    @property
    def has_weight(self) -> bool:
        return self.op in ("conv", "dense")

    @property
    def sources(self) -> list[str]:
        """Every tensor the node reads (main inputs, then the residual)."""
        return [*self.inputs, *([self.residual] if self.residual else [])]


@dataclass
class Graph:
    """A topologically ordered list of nodes; the input tensor is named ``"input"``."""

    nodes: list[Node]
    input_shape: tuple[int, int, int]  # C, H, W (batch excluded)
    num_classes: int
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per-sample output shapes

    def __post_init__(self) -> None:
        if not self.shapes:
            self.shapes = infer_shapes(self)

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    def weighted(self) -> list[Node]:
        """The layers a quantization plan assigns settings to, in order."""
        return [n for n in self.nodes if n.has_weight]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def shape_of(self, name: str) -> tuple[int, ...]:
        """Per-sample shape of a tensor (a node's output or ``"input"``)."""
        return tuple(self.input_shape) if name == "input" else self.shapes[name]

    def input_shape_of(self, node: Node) -> tuple[int, ...]:
        """Per-sample shape of a node's main input."""
        return self.shape_of(node.inputs[0])

    def macs(self, node: Node) -> int:
        """Multiply-accumulates per sample of one weighted layer (grouped: ``weight`` is ``[O, I/g, kh, kw]``)."""
        if node.op == "conv":
            o, i, kh, kw = node.weight.shape
            _, h, w = self.shapes[node.name]
            return int(o * i * kh * kw * h * w)
        if node.op == "dense":
            o, i = node.weight.shape
            return int(o * i)
        return 0


def infer_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape of every node, by running the float graph on zeros (cheap, exact)."""
    x = torch.zeros((1, *graph.input_shape))
    outs = run_float(graph, x, keep_all=True)
    return {k: tuple(v.shape[1:]) for k, v in outs.items() if k != "input"}


def channel_view(v, ndim: int):
    """A per-channel vector ``[O]`` (or a bias map ``[O, OH, OW]``) shaped to broadcast against an ``ndim``-D
    ``[N, O, ...]`` tensor; numpy arrays and torch tensors alike (every backend adds biases through it)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2)) if v.ndim == 1 else v.reshape((1, *v.shape))


def linear_part(node: Node, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The weighted layer's own map (conv or dense), before residual and activation."""
    if node.op == "conv":
        flat = bias is None or bias.ndim == 1
        y = F.conv2d(x, weight, bias if flat else None, stride=node.stride, padding=node.padding, groups=node.groups)
        return y if flat else y + channel_view(bias, 4)
    return F.linear(x, weight, bias)


def combine(node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    """The float map of an unweighted node on its inputs."""
    x = xs[0]
    if node.op == "gap":
        return x.mean(dim=(2, 3))
    if node.op == "avgpool":
        return F.avg_pool2d(x, node.kernel, node.stride, node.padding)
    if node.op == "maxpool":
        return F.max_pool2d(x, node.kernel, node.stride, node.padding)
    if node.op == "add":
        return xs[0] + xs[1]
    if node.op == "cat":
        return torch.cat(xs, dim=1)
    return x.flatten(1)


def activate(node: Node, y: torch.Tensor) -> torch.Tensor:
    """ReLU, or a clamp to ``[0, act_max]`` (ReLU6), or nothing."""
    if node.act_max is not None:
        return torch.clamp(y, 0.0, node.act_max)
    return torch.relu(y) if node.relu else y


def apply_node(node: Node, xs: list[torch.Tensor], residual: torch.Tensor | None, weight: torch.Tensor | None,
               bias: torch.Tensor | None, inject: torch.Tensor | None = None) -> torch.Tensor:
    """The float semantics of one node, shared by the float executor and the LAAQ metric's executor.

    ``inject`` is added to a weighted layer's linear output (before residual and activation): the point
    where a weight error enters.
    """
    if node.has_weight:
        y = linear_part(node, xs[0], weight, bias)
        if inject is not None:
            y = y + inject
    else:
        y = combine(node, xs)
    if residual is not None:
        y = y + residual
    return activate(node, y)


def run_float(graph: Graph, x: torch.Tensor, keep_all: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
    """Execute the (BN-folded) graph in float; ``keep_all`` returns every node's output."""
    env: dict[str, torch.Tensor] = {"input": x}
    for n in graph.nodes:
        w = torch.as_tensor(n.weight, dtype=x.dtype) if n.weight is not None else None
        b = torch.as_tensor(n.bias, dtype=x.dtype) if n.bias is not None else None
        res = env[n.residual] if n.residual else None
        env[n.name] = apply_node(n, [env[i] for i in n.inputs], res, w, b)
    return env if keep_all else env[graph.output]
