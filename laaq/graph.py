"""A small, explicit layer graph: the one description of a network that every backend reads.

Why a graph of our own instead of walking ``nn.Module``s in each backend: the float executor, the
fake-quant twin, the integer reference and the TVM lowering must agree on *exactly* the same
computation (bit for bit for the integer ones). Folding batch-norm once, into this graph, and having
all four read it removes a whole class of "the backends disagree about the model" bugs.

Nodes are kept deliberately few:

* ``conv``   — 2-D convolution (+bias), optionally fused with a residual input and/or ReLU.
* ``dense``  — fully connected (+bias), optionally with ReLU.
* ``gap``    — global average pool (NCHW → NC).
* ``flatten``— NCHW → N(CHW).

Quantization points are the outputs of ``conv``/``dense``/``gap`` (and the graph input).
The last node's output is the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

OPS = ("conv", "dense", "gap", "flatten")


@dataclass
class Node:
    """One layer. ``inputs[0]`` is the main input; ``residual`` (conv only) is added before ReLU."""

    name: str
    op: str
    inputs: list[str]
    weight: np.ndarray | None = None  # conv: [O, I, kh, kw]; dense: [O, I] (float32, BN folded)
    bias: np.ndarray | None = None  # [O]
    stride: int = 1
    padding: int = 0
    relu: bool = False
    residual: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r} in node {self.name!r}; expected one of {OPS}")

    @property
    def has_weight(self) -> bool:
        return self.op in ("conv", "dense")


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

    def input_shape_of(self, node: Node) -> tuple[int, ...]:
        """Per-sample shape of a node's main input."""
        src = node.inputs[0]
        return self.input_shape if src == "input" else self.shapes[src]

    def macs(self, node: Node) -> int:
        """Multiply-accumulates per sample of one weighted layer."""
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


def apply_node(node: Node, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
               bias: torch.Tensor | None) -> torch.Tensor:
    """The float semantics of one node, shared by the float executor and the fake-quant twin."""
    if node.op == "conv":
        y = F.conv2d(x, weight, bias, stride=node.stride, padding=node.padding)
    elif node.op == "dense":
        y = F.linear(x, weight, bias)
    elif node.op == "gap":
        y = x.mean(dim=(2, 3))
    else:  # flatten
        y = x.flatten(1)
    if residual is not None:
        y = y + residual
    if node.relu:
        y = torch.relu(y)
    return y


def run_float(graph: Graph, x: torch.Tensor, keep_all: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
    """Execute the (BN-folded) graph in float; ``keep_all`` returns every node's output."""
    env: dict[str, torch.Tensor] = {"input": x}
    for n in graph.nodes:
        w = torch.as_tensor(n.weight, dtype=x.dtype) if n.weight is not None else None
        b = torch.as_tensor(n.bias, dtype=x.dtype) if n.bias is not None else None
        res = env[n.residual] if n.residual else None
        env[n.name] = apply_node(n, env[n.inputs[0]], res, w, b)
    return env if keep_all else env[graph.output]
