"""Tiny models that exercise every op the importer supports (and a few it must refuse), for the tests.

Channel counts are deliberately not multiples of the blocked layouts' 4 / 16 so that padding channels are
exercised; batch-norm statistics are randomized so that folding matters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from laaq.models import randomize_bn_stats


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expand + ReLU6, depthwise 3×3 + ReLU6, 1×1 linear projection (+ x)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class DepthwiseNet(nn.Module):
    """Depthwise and grouped convs, ReLU6, residual adds without ReLU, global average pool."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 6, 3, 1, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU6())
        self.b1 = InvertedResidual(6, 6, 1, 2)
        self.b2 = InvertedResidual(6, 10, 2, 2)
        self.grouped = nn.Conv2d(10, 10, 3, 1, 1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b2(self.b1(self.stem(x)))
        x = torch.clamp(self.grouped(x), 0.0, 4.0)
        return self.fc(torch.flatten(self.pool(x), 1))


class PoolCatNet(nn.Module):
    """Max and average pools (k×k and global), concatenation, a standalone add with and without ReLU."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, 5, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(5)
        self.a = nn.Conv2d(5, 3, 1)
        self.b = nn.Conv2d(5, 6, 3, 1, 1)
        self.c2 = nn.Conv2d(14, 7, 3, 1, 1)
        self.c3 = nn.Conv2d(14, 7, 1)
        self.fc1 = nn.Linear(14 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)  # 8×8 → 4×4 (digits)
        x = torch.cat([x, F.relu(self.a(x)), F.avg_pool2d(F.relu6(self.b(x)), 3, 1, 1)], dim=1)  # 5 + 3 + 6 = 14
        y = F.relu(self.c2(x))
        z = F.relu(self.c3(x))
        s = F.relu(y + z)  # both operands activated: a standalone add, then ReLU
        d = y + z  # an add without ReLU too (signed)
        u = torch.cat([s, d], dim=1)  # unsigned + signed: a signed concatenation
        u = F.avg_pool2d(u, 2).reshape(x.shape[0], -1)  # 4×4 → 2×2, signed average pool
        return self.fc2(F.relu(self.fc1(u)))


class PaddedMaxNet(nn.Module):
    """A padded max pool over signed values (padding must never win) and ReLU after the pool."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_ch, 6, 3, 1, 1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 4, 3, 2, 1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.bn(self.c1(x)), 3, 2, 1))  # ReLU after the pool: moved before it
        x = F.max_pool2d(self.c2(x), 3, 1, 1)  # signed input, padded
        x = F.adaptive_max_pool2d(x, 1).view(x.size(0), -1)  # global max
        return self.fc(x)


class Attention(nn.Module):
    """Not supported: a matrix product of activations."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_ch, 4, 3, 1, 1)
        self.fc = nn.Linear(4 * 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.c(x).flatten(2)  # [N, 4, 64]
        a = torch.softmax(f.transpose(1, 2) @ f, dim=-1)
        return self.fc((f @ a).flatten(1))


class ReflectPad(nn.Module):
    """Not supported: a reflect-padded convolution."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_ch, 4, 3, 1, 1, padding_mode="reflect")
        self.fc = nn.Linear(4 * 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c(x).flatten(1))


class DataDependent(nn.Module):
    """Not supported: control flow on the data (torch.export cannot capture it)."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(in_ch * 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 10:
            x = x * 2
        return self.fc(x.flatten(1))


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        return 2 * x * g


class CustomAutograd(nn.Module):
    """Not supported: a custom autograd function."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(in_ch * 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_Square.apply(x).flatten(1))


SUPPORTED_MODELS = {"depthwise": DepthwiseNet, "poolcat": PoolCatNet, "paddedmax": PaddedMaxNet}
UNSUPPORTED_MODELS = {"attention": Attention, "reflect": ReflectPad, "data-dependent": DataDependent,
                      "custom-autograd": CustomAutograd}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {**SUPPORTED_MODELS, **UNSUPPORTED_MODELS}[name]()
    return randomize_bn_stats(model).eval()
