"""The built-in models (small CNN for MNIST, ResNet-20 for CIFAR-10, a tiny CNN for tests).

They become a :class:`laaq.graph.Graph` like any other model, through the importer
(:func:`laaq.importer.model_graph`: ``torch.export``, batch-norm folded). Their hand-written
``to_graph()`` are kept only as the tests' independent cross-check of the importer (same nodes,
bit-identical folded weights, ``tests/test_importer.py``); nothing in the pipeline calls them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from laaq.graph import Graph, Node

ARCHITECTURES = ("smallcnn", "resnet20", "tinycnn", "vgg8", "vgg8-wide")


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray]:
    """W' = W·γ/σ, b' = (b − μ)·γ/σ + β with σ = sqrt(var + eps) — exact for eval-mode BN."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        g = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * g.reshape(-1, 1, 1, 1)
        b = (b - bn.running_mean.double()) * g + bn.bias.detach().double()
    return w.float().numpy(), b.float().numpy()


def _dense(name: str, lin: nn.Linear, src: str, relu: bool) -> Node:
    return Node(name, "dense", [src], lin.weight.detach().float().numpy().copy(),
                lin.bias.detach().float().numpy().copy(), relu=relu)


def _conv(name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, src: str, relu: bool,
          residual: str | None = None) -> Node:
    w, b = fold_bn(conv, bn)
    return Node(name, "conv", [src], w, b, stride=conv.stride[0], padding=conv.padding[0], relu=relu,
                residual=residual)


class SmallCNN(nn.Module):
    """4 weighted layers for 28×28 grey digits: two strided 3×3 convs (+BN) and two dense layers."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 100,
                 image: int = 28) -> None:
        super().__init__()
        self.in_shape = (in_ch, image, image)
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        side = (image + 3) // 4
        self.fc1 = nn.Linear(2 * width * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)

    def to_graph(self) -> Graph:
        nodes = [
            _conv("conv1", self.conv1, self.bn1, "input", relu=True),
            _conv("conv2", self.conv2, self.bn2, "conv1", relu=True),
            Node("flatten", "flatten", ["conv2"]),
            _dense("fc1", self.fc1, "flatten", relu=True),
            _dense("fc2", self.fc2, "fc1", relu=False),
        ]
        return Graph(nodes, self.in_shape, self.num_classes)


def tiny_cnn(in_ch: int = 1, image: int = 8, num_classes: int = 10) -> SmallCNN:
    """The SmallCNN shape at toy size, for tests that must compile and run quickly."""
    return SmallCNN(in_ch, num_classes, width=4, hidden=16, image=image)


class BasicBlock(nn.Module):
    """ResNet basic block; a 1×1 conv (+BN) shortcut when the shape changes (option B)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (self.short(x) if self.short is not None else x))

    def nodes(self, prefix: str, src: str) -> list[Node]:
        out = [_conv(f"{prefix}.conv1", self.conv1, self.bn1, src, relu=True)]
        res = src
        if self.short is not None:
            out.append(_conv(f"{prefix}.short", self.short[0], self.short[1], src, relu=False))
            res = f"{prefix}.short"
        out.append(_conv(f"{prefix}.conv2", self.conv2, self.bn2, f"{prefix}.conv1", relu=True, residual=res))
        return out


class ResNet20(nn.Module):
    """ResNet-20 for 32×32 colour images (He et al. 2016, CIFAR variant: 3 stages × 3 blocks)."""

    def __init__(self, num_classes: int = 10, in_ch: int = 3, image: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.in_shape = (in_ch, image, image)
        self.conv = nn.Conv2d(in_ch, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers: list[BasicBlock] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1))
                cin = cout
        self.blocks = nn.ModuleList(layers)
        self.fc = nn.Linear(64, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        for blk in self.blocks:
            x = blk(x)
        return self.fc(x.mean(dim=(2, 3)))

    def to_graph(self) -> Graph:
        nodes = [_conv("conv", self.conv, self.bn, "input", relu=True)]
        src = "conv"
        for i, blk in enumerate(self.blocks):
            nodes += blk.nodes(f"block{i}", src)
            src = nodes[-1].name
        nodes += [Node("gap", "gap", [src], relu=True), _dense("fc", self.fc, "gap", relu=False)]
        return Graph(nodes, self.in_shape, self.num_classes)


def randomize_bn_stats(model: nn.Module) -> nn.Module:
    """Give every batch-norm non-trivial statistics and affine parameters (global torch RNG), in place.

    Why: a freshly built BN is the identity, so folding, fp16 BN and integer exactness would be tested on
    the one case where they cannot go wrong. Tests and benchmarks with untrained weights call this.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model


def build_model(arch: str, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Model by name for a data set's input shape."""
    c, h, _ = in_shape
    if arch == "smallcnn":
        return SmallCNN(c, num_classes, image=h)
    if arch == "tinycnn":
        return tiny_cnn(c, h, num_classes)
    if arch == "resnet20":
        return ResNet20(num_classes, c, h)
    if arch == "vgg8":
        return VGG8(c, num_classes, image=h)
    if arch == "vgg8-wide":  # VGG-16's head width: a dense layer whose weights (4 M) are its latency at batch 1
        return VGG8(c, num_classes, image=h, hidden=4096)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


class VGG8(nn.Module):
    """8 weighted layers for 28×28 grey digits, with no layer dominating the weights (mixed precision matters).

    Six 3×3 convs (+BN) in three stages of two (16-32 → 32-64 → 64-64 channels; the second conv of each
    stage has stride 2: 28 → 14 → 7 → 4), then dense 1024 → 32 → classes. At the defaults no layer holds
    more than ~27 % of the 139 k weights (SmallCNN: fc1 holds 96 %).
    """

    def __init__(self, in_ch: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 32,
                 image: int = 28) -> None:
        super().__init__()
        self.in_shape = (in_ch, image, image)
        chans = (width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width)
        strides = (1, 2, 1, 2, 1, 2)
        cin = in_ch
        # attributes conv1..conv6 / bn1..bn6 (not a ModuleList): the importer names layers by their state-dict
        # names, so the imported graph and plan files use the same layer names as to_graph()
        for i, (c, s) in enumerate(zip(chans, strides, strict=True), start=1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, c, 3, stride=s, padding=1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c))
            cin = c
        self.depth = len(chans)
        side = image
        for s in strides:
            side = (side - 1) // s + 1
        self.fc1 = nn.Linear(cin * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.num_classes = num_classes

    def stages(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        return [(getattr(self, f"conv{i}"), getattr(self, f"bn{i}")) for i in range(1, self.depth + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in self.stages():
            x = torch.relu(bn(conv(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)

    def to_graph(self) -> Graph:
        nodes, src = [], "input"
        for i, (conv, bn) in enumerate(self.stages(), start=1):
            nodes.append(_conv(f"conv{i}", conv, bn, src, relu=True))
            src = f"conv{i}"
        nodes += [Node("flatten", "flatten", [src]), _dense("fc1", self.fc1, "flatten", relu=True),
                  _dense("fc2", self.fc2, "fc1", relu=False)]
        return Graph(nodes, self.in_shape, self.num_classes)
