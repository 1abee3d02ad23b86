"""A data set's normalization ``(x − mean) / std`` as the model's first layer, folded exactly into the first conv.

The fold must keep the deployed integer model bit-exact with the twin and every TVM lowering, including at the
borders, where zero padding of the normalized input is padding with ``mean`` in pixel units (a bias map).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from harness.backend.cpu import compile_fast
from harness.backend.schemes import SCHEMES
from harness.lower import lower_integer, lower_integer_for, lower_integer_nchwc
from harness.profile import resolve
from laaq.datafiles import DataSpec
from laaq.datasplit import DataError, Normalization, Split
from laaq.graph import run_float
from laaq.importer import ModelImportError, import_model
from laaq.models import randomize_bn_stats
from laaq.normalize import normalized
from laaq.quant.integer import run_integer
from laaq.quant.plan import LayerSetting, QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input
from laaq.quant.twin import Twin

SHAPE = (3, 9, 9)
NORM = Normalization.parse("imagenet")


def _net(first: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    ch = first.out_channels
    return randomize_bn_stats(nn.Sequential(first, nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, 5, 3, 1, 1), nn.ReLU(),
                                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))).eval()


FIRST = {"padded": lambda: nn.Conv2d(3, 6, 3, 2, 1), "unpadded": lambda: nn.Conv2d(3, 6, 3, 1, 0),
         "depthwise": lambda: nn.Conv2d(3, 6, 3, 1, 1, groups=3)}


@pytest.fixture(scope="module", params=list(FIRST))
def case(request):
    model = normalized(_net(FIRST[request.param]()), NORM).eval()
    graph = import_model(model, SHAPE, 4)
    plan = QuantPlan({n.name: LayerSetting(b, 1.0) for n, b in zip(graph.weighted(), (8, 5, 6), strict=True)})
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(2))
    qg = quantize_graph(graph, plan, torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(1)))
    xq = quantize_input(x).numpy()
    return request.param, model, graph, qg, x, xq, run_integer(qg, xq)


def test_fold_reproduces_the_model_and_keeps_a_bias_map_only_where_borders_need_one(case) -> None:
    name, model, graph, _, x, _, _ = case
    first = graph.weighted()[0]
    assert first.inputs == ["input"] and len(graph.weighted()) == 3, "no layer of its own for the normalization"
    assert first.bias.shape == ((6,) if name == "unpadded" else (6, *graph.shapes[first.name][1:]))
    with torch.no_grad():
        assert torch.allclose(run_float(graph, x), model(x), atol=1e-4)
    if name != "unpadded":  # interior outputs share one bias value per channel; border ones differ from it
        inner = first.bias[:, 1:-1, 1:-1]
        assert np.allclose(inner, inner[:, :1, :1], atol=1e-5)
        assert not np.allclose(first.bias[:, 0, 0], first.bias[:, 1, 1], atol=1e-3)


def test_twin_equals_reference(case) -> None:
    _, _, _, qg, x, _, ref = case
    assert np.array_equal(Twin(qg).forward_int(x)[1].numpy(), ref)


def test_tvm_nchw_every_blocked_scheme_and_the_native_schedule_equal_reference(case) -> None:
    """The bias map in every layout: NCHW, each blocked scheme (x86 and Arm offsets, as plain loops here) and
    the x86 target's own hand schedule."""
    _, _, _, qg, _, xq, ref = case
    host = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
    exes = [tvm.compile(lower_integer(qg, len(xq)), target=host)]
    exes += [tvm.compile(lower_integer_nchwc(qg, len(xq), scheme), target=host) for scheme in SCHEMES.values()]
    profile = resolve("x86")
    exes.append(compile_fast(lower_integer_for(qg, len(xq), profile), profile.tvm_target, scheme=profile.scheme))
    for ex in exes:
        out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xq)).numpy()
        assert np.array_equal(out, ref)


class PoolsTheNormalizedInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class PerPixelOffset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offset", torch.rand(1, 3, 9, 9))
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 7 * 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x - self.offset), 1))


@pytest.mark.parametrize(("model", "says"), [
    (lambda: normalized(PoolsTheNormalizedInput(), NORM), "must feed convolutions only"),
    (PerPixelOffset, "a constant of shape [1, 3, 9, 9]"),
])
def test_a_normalization_that_cannot_be_folded_is_refused_in_one_line(model, says: str) -> None:
    with pytest.raises(ModelImportError, match=r".*") as e:
        import_model(model().eval(), SHAPE, 4)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_spec_text_round_trips_and_bad_normalizations_are_one_line(tmp_path) -> None:
    spec = DataSpec.parse(f"folder@32:{tmp_path}", normalize="imagenet")
    assert spec.text() == f"folder@32+norm=0.485,0.456,0.406/0.229,0.224,0.225:{tmp_path}"
    assert DataSpec.parse(spec.text()) == spec and spec.slug().endswith("-32-norm")
    assert DataSpec.parse("mnist5k+norm=0.1307/0.3081").normalization == Normalization((0.1307,), (0.3081,))
    for bad in ("0.5", "0.5/0", "0.1,0.2/0.3", "a/b", "0.5/-1"):
        with pytest.raises(DataError, match="normalization"):
            Normalization.parse(bad)
    with pytest.raises(DataError, match="gives 3 channel"):
        DataSpec.parse("digits", normalize="imagenet").normalize(Split("d", *(torch.zeros(2, 1, 8, 8),
                                                                              torch.zeros(2)) * 2))


def test_the_normalization_changes_the_checkpoint_key() -> None:
    s = Split("d", torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))
    n = DataSpec.parse("digits", normalize="0.5/0.25").normalize(s)
    assert n.normalization is not None and n.digest() != s.digest()
