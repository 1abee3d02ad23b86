"""A MobileNetV2-style network (Sandler et al. 2018) at a small width, for ``--model``.

Inverted residual blocks — 1×1 expansion + ReLU6, 3×3 depthwise + ReLU6, 1×1 linear projection — with the
identity shortcut added *without* a ReLU where shapes allow, a 1×1 head conv, global average pooling and
a linear classifier: the ops that make MobileNet the common edge architecture. The stem has stride 1 and
the stage strides are fewer than ImageNet's, as in CIFAR/MNIST-sized versions, so a 28×28 digit keeps a
4×4 map before pooling. Width 0.25 keeps PGD-AT on the embedded MNIST-5k data to a few 2-core minutes.

    make bench ARGS="--model examples/mobilenetv2.py:mobilenetv2 --lr 0.01"

The learning rate matters: with the harness's default (Adam, one-cycle, peak 1e-3) PGD-AT at ε = 0.3 stalls
near chance on this narrow net (clean 34 %, PGD-20 0.4 % after 6 epochs); peak 1e-2 without dropout gave
clean 92.7 %, PGD-20 74.6 % (same recipe, measured on a GPU; docs in README, *Bring your own model*).

Only ``torch`` is imported: the file is all a person needs to bring.
"""

from __future__ import annotations

import torch
from torch import nn


def _round(c: float, divisor: int = 4) -> int:
    """Channels rounded to a multiple of ``divisor`` (at least ``divisor``), as MobileNet's ``_make_divisible``."""
    return max(divisor, int(c + divisor / 2) // divisor * divisor)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu6: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu6:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1×1), filter (depthwise 3×3), project (1×1, linear); ``x +`` when stride 1 and shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        layers = [conv_bn(cin, mid, 1)] if expand != 1 else []
        layers += [conv_bn(mid, mid, 3, stride, groups=mid), conv_bn(mid, cout, 1, relu6=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), MobileNetV2's table with fewer strides
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 1), (6, 96, 1, 1))

    # the paper's ImageNet table (Sandler et al. 2018, Table 2): 17 blocks, output stride 32
    IMAGENET = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 0.25, head: int = 128,
                 dropout: float = 0.0, settings: tuple[tuple[int, int, int, int], ...] | None = None,
                 divisor: int = 4) -> None:
        super().__init__()
        cin = _round(32 * width, divisor)
        layers: list[nn.Module] = [conv_bn(in_channels, cin, 3, 2)]  # stride-2 stem: 28×28 → 14×14, 224 → 112
        for t, c, n, s in settings or self.SETTINGS:
            cout = _round(c * width, divisor)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn(cin, head, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenetv2(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The factory ``--model examples/mobilenetv2.py:mobilenetv2`` calls (width 0.25)."""
    return MobileNetV2(in_channels, num_classes)


def mobilenetv2_1_0(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 as deployed: width 1.0, the ImageNet table, a 1,280-channel head (``--image-size 224``:
    ~300 M multiply-accumulates, 2.2 M weights with 10 classes, 3.5 M with 1,000)::

        laaq-bench bench --model examples/mobilenetv2.py:mobilenetv2_1_0 --dataset folder:PATH --image-size 224
    """
    return MobileNetV2(in_channels, num_classes, width=1.0, head=1280, settings=MobileNetV2.IMAGENET, divisor=8)
