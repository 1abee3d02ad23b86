"""The importer: every supported op against PyTorch's own output, the built-in models against their
hand-written graphs, and one clear refusal (op, node, source line, what is supported) for the rest."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from op_models import SUPPORTED_MODELS, UNSUPPORTED_MODELS, build
from torch import nn

from laaq.graph import run_float
from laaq.importer import SUPPORTED, ModelImportError, import_model, model_graph
from laaq.models import VGG8, ResNet20, SmallCNN, randomize_bn_stats, tiny_cnn

SHAPE = (1, 8, 8)


class Op(nn.Module):
    """One op (or a short chain) between a conv and a linear classifier."""

    def __init__(self, body, ch: int = 6, conv: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv or nn.Conv2d(1, ch, 3, 1, 1)
        self.bn = nn.BatchNorm2d(self.conv.out_channels)
        self.body = body
        with torch.no_grad():
            feats = self.body(self, self.bn(self.conv(torch.zeros(1, *SHAPE)))).flatten(1).shape[1]
        self.fc = nn.Linear(feats, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self, self.bn(self.conv(x))).flatten(1))


def _dw(m, x):
    if not hasattr(m, "dw"):
        m.dw = nn.Conv2d(6, 6, 3, 2, 1, groups=6)
        m.dw_bn = nn.BatchNorm2d(6)
    return F.relu6(m.dw_bn(m.dw(x)))


def _grouped(m, x):
    if not hasattr(m, "g"):
        m.g = nn.Conv2d(6, 9, 3, 1, 0, groups=3)  # 2 input, 3 output channels per group, no padding
    return F.hardtanh(m.g(F.relu(x)), 0.0, 3.0)


def _res(m, x, relu: bool):
    if not hasattr(m, "c2"):
        m.c2 = nn.Conv2d(6, 6, 3, 1, 1)
        m.bn2 = nn.BatchNorm2d(6)
    x = F.relu(x)
    y = m.bn2(m.c2(x)) + x
    return F.relu(y) if relu else y


OPS = {
    "conv+bn+relu": lambda m, x: F.relu(x),
    "relu_inplace": lambda m, x: nn.ReLU(inplace=True)(x),
    "relu6": lambda m, x: F.relu6(x),
    "clamp(0,2)": lambda m, x: torch.clamp(x, 0.0, 2.0),
    "clamp_min(0)": lambda m, x: torch.clamp_min(x, 0.0),
    "depthwise+relu6": _dw,
    "grouped+hardtanh": _grouped,
    "residual+relu": lambda m, x: _res(m, x, True),
    "residual_no_relu": lambda m, x: _res(m, x, False),
    "maxpool2": lambda m, x: F.max_pool2d(F.relu(x), 2),
    "maxpool3s2p1_signed": lambda m, x: F.max_pool2d(x, 3, 2, 1),
    "maxpool_then_relu": lambda m, x: F.relu(F.max_pool2d(x, 2)),
    "avgpool2": lambda m, x: F.avg_pool2d(F.relu(x), 2),
    "avgpool3s1p1_signed": lambda m, x: F.avg_pool2d(x, 3, 1, 1),
    "adaptive_avg_4": lambda m, x: F.adaptive_avg_pool2d(F.relu(x), 4),
    "global_avg": lambda m, x: F.adaptive_avg_pool2d(F.relu(x), 1),
    "global_mean": lambda m, x: x.mean(dim=(-2, -1)),
    "global_max": lambda m, x: F.adaptive_max_pool2d(x, 1),
    "amax": lambda m, x: torch.amax(F.relu(x), dim=(2, 3)),
    "cat": lambda m, x: (lambda y: torch.cat([y, F.max_pool2d(y, 3, 1, 1)], dim=1))(F.relu(x)),
    "cat_neg_dim": lambda m, x: (lambda y: torch.cat([y, F.avg_pool2d(y, 3, 1, 1)], dim=-3))(F.relu(x)),
    "add_standalone": lambda m, x: (lambda y: y + F.max_pool2d(y, 3, 1, 1))(F.relu(x)),
    "view": lambda m, x: F.relu(x).view(x.size(0), -1),
    "reshape": lambda m, x: F.relu(x).reshape(x.shape[0], -1),
    "dropout": lambda m, x: F.dropout(F.relu(x), 0.3, training=False),
}


def _check(model: nn.Module, shape=SHAPE, atol: float = 1e-5):
    model.eval()
    graph = import_model(model, shape)
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        np.testing.assert_allclose(run_float(graph, x).numpy(), model(x).numpy(), atol=atol, rtol=0)
    return graph


@pytest.mark.parametrize("name", list(OPS))
def test_each_op_matches_pytorch(name: str) -> None:
    torch.manual_seed(0)
    model = Op(OPS[name])
    randomize_bn_stats(model)
    _check(model)


def test_ops_land_in_the_graph() -> None:
    torch.manual_seed(0)
    g = _check(randomize_bn_stats(Op(OPS["depthwise+relu6"])))
    dw = g.node("dw")
    assert dw.groups == 6 and dw.act_max == 6.0 and dw.relu
    g = _check(randomize_bn_stats(Op(OPS["residual_no_relu"])))
    assert g.node("c2").residual == "conv" and not g.node("c2").relu  # fused into the conv, no ReLU after
    g = _check(randomize_bn_stats(Op(OPS["maxpool_then_relu"])))
    assert g.node("conv").relu and g.node("maxpool").relu  # the ReLU moved before the pool
    g = _check(randomize_bn_stats(Op(OPS["add_standalone"])))
    assert [n.op for n in g.nodes].count("add") == 1  # both operands activated: no fusion possible


@pytest.mark.parametrize("name", list(SUPPORTED_MODELS))
def test_op_models_match_pytorch(name: str) -> None:
    _check(build(name))


def _hand_written_cases():
    torch.manual_seed(0)
    return [("smallcnn", SmallCNN(), (1, 28, 28)), ("resnet20", ResNet20(image=16), (3, 16, 16)),
            ("tinycnn", tiny_cnn(), (1, 8, 8)), ("vgg8", VGG8(), (1, 28, 28))]


@pytest.mark.parametrize(("name", "model", "shape"), _hand_written_cases(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_builtin_models_equal_their_hand_written_graphs(name: str, model: nn.Module, shape) -> None:
    """Same nodes, order, strides, activations, residual structure and bit-identical folded weights."""
    randomize_bn_stats(model).eval()
    imported, hand = _check(model, shape), model.to_graph()
    assert [n.op for n in imported.nodes] == [n.op for n in hand.nodes]
    names = dict(zip([n.name for n in hand.nodes], [n.name for n in imported.nodes], strict=True))
    for a, b in zip(imported.nodes, hand.nodes, strict=True):
        assert (a.stride, a.padding, a.relu, a.groups, a.act_max) == (b.stride, b.padding, b.relu, b.groups, b.act_max)
        assert a.inputs == [names.get(i, i) for i in b.inputs] and a.residual == names.get(b.residual, b.residual)
        if b.weight is not None:
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias), a.name
    if name in ("smallcnn", "vgg8"):  # plan files name layers: these built-in models keep their names
        assert [n.name for n in imported.nodes] == [n.name for n in hand.nodes]


@pytest.mark.parametrize("name", list(UNSUPPORTED_MODELS))
def test_unsupported_models_refused_with_their_source_line(name: str) -> None:
    with pytest.raises(ModelImportError) as e:
        import_model(build(name), SHAPE)
    msg = str(e.value)
    assert "\n" not in msg and SUPPORTED in msg
    assert re.search(r"op_models\.py:\d+: ", msg), msg  # the line of the model's source that torch recorded
    assert e.value.op and e.value.node


@pytest.mark.parametrize(("body", "needle"), [
    (lambda m, x: F.leaky_relu(x), "leaky_relu"),
    (lambda m, x: torch.clamp(x, -1.0, 1.0), "lower bound -1"),
    (lambda m, x: x * 2, "aten.mul.Tensor"),
    (lambda m, x: F.max_pool2d(x, 3, 2, ceil_mode=True), "ceil_mode"),
    (lambda m, x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), "count_include_pad"),
    (lambda m, x: x.flatten(2), "reshape"),
    (lambda m, x: torch.cat([F.relu(x), x], dim=1), "used nowhere else"),  # a ReLU of a tensor also used without it
])
def test_unsupported_ops_named(body, needle: str) -> None:
    with pytest.raises(ModelImportError, match=re.escape(needle)) as e:
        import_model(Op(body), SHAPE)
    assert "test_importer.py:" in str(e.value)


def test_dilation_and_final_activation_refused() -> None:
    with pytest.raises(ModelImportError, match="dilation"):
        import_model(Op(lambda m, x: x, conv=nn.Conv2d(1, 4, 3, 1, 2, dilation=2)), SHAPE)

    class ReluOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return F.relu(self.fc(x.flatten(1)))

    with pytest.raises(ModelImportError, match="activation"):
        import_model(ReluOut(), SHAPE)


def test_model_graph_is_reused_until_the_weights_change() -> None:
    model = tiny_cnn().eval()
    g1 = model_graph(model, SHAPE)
    assert model_graph(model, SHAPE) is g1
    with torch.no_grad():
        model.fc2.bias.add_(1.0)  # in place, as training and load_state_dict do
    g2 = model_graph(model, SHAPE)
    assert g2 is not g1 and np.allclose(g2.node("fc2").bias, g1.node("fc2").bias + 1.0)
