"""``torch.export``'s ATen graph → :class:`laaq.graph.Graph`, one ATen node at a time.

Why translate ATen rather than walk ``nn.Module``s: ``torch.export`` sees what ``forward`` really does
(functional calls, ``x + y``, ``torch.cat``, in-place ReLUs, module reuse) whatever the model's
class structure, and records the source line of every op, so a refusal can point at the line.

Fusions, the ones the hand-written ``to_graph()`` of the built-in models did:

* ``batch_norm`` right after a conv (or linear) is folded into its weights (float64, as ``fold_bn``);
* an activation (ReLU, ReLU6 / hardtanh / clamp(0, m)) right after a conv, linear or add becomes that
  node's activation; after a max pool it moves before the pool (monotone maps commute with max);
* ``a + b`` where one operand is a conv (or linear) output used nowhere else, not yet activated,
  becomes that layer's residual input (the node moves to the add's place in the order); otherwise an
  ``add`` node with its own requantization.

* an input normalization — ``(x − mean) / std`` or any chain of per-channel ``+ − × ÷`` by constants on
  the model's input — is folded into the convolutions that read it: ``W' = W·a`` per input channel and a
  bias that adds ``conv(b)``. Zero padding of the normalized input is padding with ``mean`` in pixel units,
  so at the borders that bias differs: it becomes a bias map ``[O, OH, OW]`` (:mod:`laaq.graph`) and the
  fold stays exact. The deployed model then takes the raw uint8 pixels, and ε stays in pixel units.

A value may be modified by a fusion only while every ATen node since its layer was created has a single
user: a conv whose output is also read elsewhere cannot absorb a batch-norm or a ReLU.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from laaq.graph import Graph, Node
from laaq.importer.errors import ModelImportError, source_line

IDENTITY = {"aten.dropout.default", "aten.feature_dropout.default", "aten.alpha_dropout.default",
            "aten.clone.default", "aten.contiguous.default", "aten.alias.default", "aten.detach.default",
            "aten.detach_.default", "aten.lift_fresh_copy.default", "aten.to.dtype", "aten.to.dtype_layout",
            "aten._to_copy.default"}
SHAPE = {"aten.flatten.using_ints", "aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
         "aten.squeeze.default", "aten.squeeze.dim", "aten.squeeze.dims"}
ACTIVATIONS = {"aten.relu.default", "aten.relu_.default", "aten.relu6.default", "aten.relu6_.default",
               "aten.hardtanh.default", "aten.hardtanh_.default", "aten.clamp.default", "aten.clamp_.default",
               "aten.clamp_min.default", "aten.clamp_min_.default"}

#: why a common unsupported op is refused (by ATen op name without overload)
HINTS = {
    "pad": "explicit or non-zero padding is not supported (a conv's padding_mode must be 'zeros')",
    "scaled_dot_product_attention": "attention is not supported (no integer matmul of two activations)",
    "matmul": "a product of two activations (attention-like) is not supported",
    "bmm": "a product of two activations (attention-like) is not supported",
    "softmax": "softmax is not supported (only a classifier's logits leave the model, un-normalized)",
    "mul": "element-wise multiplication is not supported (squeeze-excite, gating, custom functions)",
    "sigmoid": "sigmoid / hard-swish style activations are not supported (ReLU, ReLU6, clamp(0, m) are)",
    "hardswish": "hard-swish is not supported (ReLU, ReLU6, clamp(0, m) are)",
    "gelu": "GELU is not supported (ReLU, ReLU6, clamp(0, m) are)",
}


@dataclass
class Value:
    """An activation tensor of the model as the graph holds it."""

    node: str  # graph node producing it ("input": the network input)
    flat: bool  # per-sample rank 1 (after a flatten or a global pool)
    nonneg: bool  # every element ≥ 0: quantized unsigned
    end: fx.Node | None  # the ATen node whose result this is
    open: bool = True  # every ATen node since the layer was created had one user: fusions may still change it
    #: the model's input under a per-channel affine map, ``input·scale + shift`` ([C] float64 each): a
    #: normalization not yet folded (only ``node == "input"`` carries one)
    affine: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class Param:
    """A parameter / buffer placeholder: its state-dict name and tensor."""

    target: str
    tensor: torch.Tensor


def _arg(n: fx.Node, i: int, name: str, default: Any = None) -> Any:
    return n.args[i] if len(n.args) > i else n.kwargs.get(name, default)


def _val(n: fx.Node) -> torch.Tensor:
    """torch's example value of a node (the first one of an op returning a tuple)."""
    v = n.meta["val"]
    return v[0] if isinstance(v, (tuple, list)) else v


def _per_sample(n: fx.Node) -> tuple[int, ...]:
    return tuple(int(d) for d in _val(n).shape[1:])


class Translator:
    """Walks an exported program once and builds the node list; :meth:`graph` finishes it."""

    def __init__(self, ep: torch.export.ExportedProgram, input_shape: tuple[int, int, int]) -> None:
        self.ep = ep
        self.input_shape = tuple(input_shape)
        self.nodes: list[Node] = []
        self.by_name: dict[str, Node] = {}
        self.w64: dict[str, torch.Tensor] = {}  # weights and biases in float64 while batch-norm is folded
        self.b64: dict[str, torch.Tensor] = {}
        self.values: dict[fx.Node, Any] = {}
        self.fx_of: dict[str, fx.Node] = {}  # graph node → the ATen node that created it (for shape checks)
        self.handlers = {
            "aten.conv2d.default": self.conv, "aten.conv2d.padding": self.conv, "aten.convolution.default": self.conv,
            "aten.linear.default": self.linear, "aten.batch_norm.default": self.batch_norm,
            "aten._native_batch_norm_legit_no_training.default": self.batch_norm,
            "aten.add.Tensor": self.add, "aten.add_.Tensor": self.add, "aten.cat.default": self.cat,
            "aten.max_pool2d.default": self.pool, "aten.max_pool2d_with_indices.default": self.pool,
            "aten.avg_pool2d.default": self.pool, "aten.adaptive_avg_pool2d.default": self.adaptive,
            "aten.adaptive_max_pool2d.default": self.adaptive, "aten.mean.dim": self.reduce,
            "aten.amax.default": self.reduce, "aten.sub.Tensor": self.affine, "aten.sub_.Tensor": self.affine,
            "aten.mul.Tensor": self.affine, "aten.mul_.Tensor": self.affine, "aten.div.Tensor": self.affine,
            "aten.div_.Tensor": self.affine,
            **{k: self.activation for k in ACTIVATIONS}, **{k: self.identity for k in IDENTITY},
            **{k: self.reshape for k in SHAPE},
        }
        self._params()

    # ---- plumbing ---------------------------------------------------------------------------------
    def refuse(self, n: fx.Node, detail: str) -> ModelImportError:
        return ModelImportError(str(n.target), n.name, source_line(n.meta.get("stack_trace")), detail)

    def _params(self) -> None:
        sig = self.ep.graph_signature
        state, consts = self.ep.state_dict, self.ep.constants
        placeholders = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        users = []
        for spec in sig.input_specs:
            n = placeholders[spec.arg.name]
            if spec.kind.name == "USER_INPUT":
                users.append(n)
            elif spec.target in state or spec.target in consts:
                t = state[spec.target] if spec.target in state else consts[spec.target]
                self.values[n] = Param(spec.target, t.detach())
        if len(users) != 1:
            raise ModelImportError("forward", "inputs", "the model's forward",
                                   f"forward must take exactly one tensor, it takes {len(users)}")
        self.values[users[0]] = Value("input", False, True, users[0])

    def tensor(self, n: fx.Node, a: Any, normalized_ok: bool = False) -> Value:
        v = self.values.get(a) if isinstance(a, fx.Node) else None
        if not isinstance(v, Value):
            raise self.refuse(n, f"operand {a!r} is not an activation (a constant or parameter used as data)")
        if v.affine is not None and not normalized_ok:
            raise self.refuse(n, "a normalization of the input ((x − mean) / std) must feed convolutions only "
                                 "(it is folded into them); here it feeds another op")
        return v

    def param(self, n: fx.Node, a: Any, what: str) -> Param | None:
        if a is None:
            return None
        v = self.values.get(a) if isinstance(a, fx.Node) else None
        if not isinstance(v, Param):
            raise self.refuse(n, f"the {what} must be a parameter or buffer of the module")
        return v

    def unique(self, base: str) -> str:
        name, i = base, 0
        while name in self.by_name or name == "input":
            i += 1
            name = f"{base}_{i}"
        return name

    def emit(self, node: Node, n: fx.Node, nonneg: bool, flat: bool) -> Value:
        self.nodes.append(node)
        self.by_name[node.name] = node
        self.fx_of[node.name] = n
        return Value(node.name, flat, nonneg, n)

    def fusable(self, v: Value, ops: tuple[str, ...]) -> Node | None:
        """The layer ``v`` comes straight from, when a fusion may still change it (one user all along)."""
        if v.node == "input" or not v.open or v.end is None or len(v.end.users) != 1:
            return None
        node = self.by_name[v.node]
        return node if node.op in ops else None

    def square(self, n: fx.Node, v: Any, what: str, default: int | None = None) -> int:
        vals = [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])] or ([default] if default else [])
        if not vals or any(x != vals[0] for x in vals):
            raise self.refuse(n, f"{what} {v} is not the same along height and width")
        return vals[0]

    # ---- ops --------------------------------------------------------------------------------------
    def conv(self, n: fx.Node) -> Value:
        x = self.tensor(n, n.args[0], normalized_ok=True)
        w = self.param(n, n.args[1], "conv weight")
        b = self.param(n, _arg(n, 2, "bias"), "conv bias")
        if str(n.target) == "aten.convolution.default":
            stride, padding, dilation, transposed, _, groups = n.args[3:9]
            if transposed:
                raise self.refuse(n, "transposed convolutions are not supported")
        else:
            stride, padding = _arg(n, 3, "stride", [1]), _arg(n, 4, "padding", [0])
            dilation, groups = _arg(n, 5, "dilation", [1]), _arg(n, 6, "groups", 1)
        if x.flat or w.tensor.ndim != 4:
            raise self.refuse(n, "a 2-D convolution needs an NCHW activation")
        if any(int(d) != 1 for d in (dilation if isinstance(dilation, (list, tuple)) else [dilation])):
            raise self.refuse(n, f"dilation {dilation} is not supported")
        stride = self.square(n, stride, "stride")
        if isinstance(padding, str):
            kh, kw = w.tensor.shape[2:]
            if padding == "valid":
                padding = 0
            elif padding == "same" and stride == 1 and kh == kw and kh % 2 == 1:
                padding = kh // 2
            else:
                raise self.refuse(n, f"padding={padding!r} with a {kh}×{kw} kernel, stride {stride}")
        name = self.unique(w.target.removesuffix(".weight") or n.name)
        node = Node(name, "conv", [x.node], stride=stride, padding=self.square(n, padding, "padding"),
                    groups=int(groups))
        self._weights(name, w, b)
        if x.affine is not None:
            self._fold_affine(name, node, x.affine)
        return self.emit(node, n, nonneg=False, flat=False)

    def _fold_affine(self, name: str, node: Node, affine: tuple[torch.Tensor, torch.Tensor]) -> None:
        """``conv(input·a + b) = conv'(input) + bias map``: ``W'[o, j] = W[o, j]·a[c(o, j)]``, and the bias gains
        ``conv(b)`` computed on a constant image — with the conv's own zero padding, so the border outputs get
        exactly the terms the normalized input's padding contributes (float64 throughout)."""
        scale, shift = affine
        w = self.w64[name]
        o, cg = w.shape[:2]
        chan = (torch.arange(o)[:, None] // (o // node.groups)) * cg + torch.arange(cg)[None, :]  # w[o, j]'s input
        self.w64[name] = w * scale[chan][:, :, None, None]
        c, h, wd = self.input_shape
        image = shift.reshape(1, c, 1, 1).expand(1, c, h, wd)
        extra = F.conv2d(image, w, None, node.stride, node.padding, 1, node.groups)[0]
        if node.padding == 0 or not bool(shift.any()):  # every window inside: the same value everywhere
            extra = extra[:, 0, 0]
        self.b64[name] = (self.b64[name].reshape((-1,) + (1,) * (extra.ndim - 1)) + extra).contiguous()

    def affine(self, n: fx.Node) -> Value:
        """``input ± c``, ``input × c``, ``input ÷ c`` with a per-channel or scalar constant ``c``: kept as an affine
        map of the input until the convolutions that read it fold it in (:meth:`_fold_affine`)."""
        op = str(n.target).split(".")[1].rstrip("_")
        a, b = n.args[0], n.args[1]
        x = self.values.get(a) if isinstance(a, fx.Node) else None
        if not isinstance(x, Value) or x.node != "input" or isinstance(self.values.get(b), Value):
            raise self.refuse(n, HINTS["mul"] if op == "mul" else
                              f"{op} is supported only between the model's input and a constant (a normalization "
                              "(x − mean) / std, folded into the first convolution)")
        if op == "sub" and _arg(n, 2, "alpha", 1) != 1:
            raise self.refuse(n, "sub with alpha ≠ 1")
        const = self._channel_constant(n, b)
        scale, shift = x.affine if x.affine is not None else (torch.ones_like(const), torch.zeros_like(const))
        if op in ("div", "mul") and not bool(torch.all(const != 0)):
            raise self.refuse(n, f"{op} of the input by a constant with a zero entry")
        if op == "sub":
            scale, shift = scale, shift - const
        elif op == "add":
            scale, shift = scale, shift + const
        elif op == "mul":
            scale, shift = scale * const, shift * const
        else:
            scale, shift = scale / const, shift / const
        return Value("input", False, False, n, open=False, affine=(scale, shift))

    def _channel_constant(self, n: fx.Node, b: Any) -> torch.Tensor:
        """A scalar, or a buffer / constant of shape ``[C, 1, 1]`` / ``[1, C, 1, 1]`` / one element → ``[C]``."""
        c = self.input_shape[0]
        if isinstance(b, (int, float)):
            return torch.full((c,), float(b), dtype=torch.float64)
        p = self.values.get(b) if isinstance(b, fx.Node) else None
        if not isinstance(p, Param):
            raise self.refuse(n, "the input may only be combined with a constant (a module buffer or a number)")
        t = p.tensor.detach().double()
        if t.numel() == 1:
            return t.reshape(1).expand(c).clone()
        if tuple(t.shape) in ((c, 1, 1), (1, c, 1, 1)):
            return t.reshape(c).clone()
        raise self.refuse(n, f"a constant of shape {list(t.shape)} combined with the input (only per-channel "
                             f"[{c}, 1, 1] or scalar constants, as in (x − mean) / std)")

    def _weights(self, name: str, w: Param, b: Param | None) -> None:
        self.w64[name] = w.tensor.double()
        self.b64[name] = b.tensor.double() if b is not None else torch.zeros(w.tensor.shape[0], dtype=torch.float64)

    def linear(self, n: fx.Node) -> Value:
        x = self.tensor(n, n.args[0])
        w = self.param(n, n.args[1], "linear weight")
        b = self.param(n, _arg(n, 2, "bias"), "linear bias")
        if not x.flat:
            raise self.refuse(n, "a linear layer needs a flattened [N, features] input (flatten first)")
        name = self.unique(w.target.removesuffix(".weight") or n.name)
        self._weights(name, w, b)
        return self.emit(Node(name, "dense", [x.node]), n, nonneg=False, flat=True)

    def batch_norm(self, n: fx.Node) -> Value | tuple:
        x = self.tensor(n, n.args[0])
        legit = str(n.target).startswith("aten._native")
        gamma, beta = self.param(n, n.args[1], "scale"), self.param(n, n.args[2], "shift")
        mean, var = self.param(n, n.args[3], "running mean"), self.param(n, n.args[4], "running var")
        if not legit and _arg(n, 5, "training", False):
            raise self.refuse(n, "batch-norm in training mode (the model is exported in eval mode; "
                                 "a functional batch_norm(training=True) cannot be folded)")
        eps = float(n.args[6] if legit else _arg(n, 7, "eps", 1e-5))
        layer = self.fusable(x, ("conv", "dense"))
        if layer is None or layer.relu or layer.residual:
            raise self.refuse(n, "batch-norm can only be folded right after a conv or linear layer whose output "
                                 "is used nowhere else")
        g = (gamma.tensor.double() if gamma else torch.ones_like(var.tensor, dtype=torch.float64)) \
            / torch.sqrt(var.tensor.double() + eps)
        shape = (-1,) + (1,) * (self.w64[layer.name].ndim - 1)
        self.w64[layer.name] = self.w64[layer.name] * g.reshape(shape)
        shift = beta.tensor.double() if beta else 0.0
        view = (-1,) + (1,) * (self.b64[layer.name].ndim - 1)  # a bias map [O, OH, OW] after a folded normalization
        shift = shift.reshape(view) if isinstance(shift, torch.Tensor) else shift
        self.b64[layer.name] = (self.b64[layer.name] - mean.tensor.double().reshape(view)) * g.reshape(view) + shift
        out = replace(x, end=n)
        return (out, None, None) if legit else out

    def activation(self, n: fx.Node) -> Value:
        x = self.tensor(n, n.args[0])
        t = str(n.target).split(".")[1].rstrip("_")
        if t == "relu":
            lo, hi = 0.0, None
        elif t == "relu6":
            lo, hi = 0.0, 6.0
        elif t == "hardtanh":
            lo, hi = float(_arg(n, 1, "min_val", -1.0)), float(_arg(n, 2, "max_val", 1.0))
        else:  # clamp / clamp_min
            lo, hi = _arg(n, 1, "min"), (_arg(n, 2, "max") if t == "clamp" else None)
            hi = None if hi is None else float(hi)
        if lo is None or float(lo) != 0.0:
            raise self.refuse(n, f"a clamp with lower bound {lo} (only 0: ReLU, ReLU6, clamp(0, m))")
        if hi is not None and hi <= 0:
            raise self.refuse(n, f"a clamp to [0, {hi}] is constant")
        layer = self.fusable(x, ("conv", "dense", "add"))
        if layer is None and x.node != "input" and self.by_name[x.node].op == "maxpool":
            layer = self._through_maxpool(x)
        if layer is not None and (not layer.relu or hi is not None):
            layer.relu = True
            if hi is not None:
                layer.act_max = hi if layer.act_max is None else min(layer.act_max, hi)
            return replace(x, nonneg=True, end=n)
        if x.nonneg and hi is None:  # ReLU of values that are ≥ 0 anyway
            return replace(x, end=n, open=x.open and len(x.end.users) == 1)
        raise self.refuse(n, "ReLU / clamp must follow a conv, linear or add whose output is used nowhere else "
                             "(here its input is also used without it, or comes from an op it cannot join)")

    def _through_maxpool(self, x: Value) -> Node | None:
        """relu(maxpool(y)) = maxpool(relu(y)): the activation moves to y's layer when it may."""
        pool = self.by_name[x.node]
        if not x.open or len(x.end.users) != 1:
            return None
        src = self.values.get(self.fx_of[pool.name].args[0])
        layer = self.fusable(src, ("conv", "dense", "add")) if isinstance(src, Value) else None
        if layer is not None:
            pool.relu = True
        return layer

    def add(self, n: fx.Node) -> Value:
        if _arg(n, 2, "alpha", 1) != 1:
            raise self.refuse(n, "add with alpha ≠ 1")
        if not isinstance(self.values.get(n.args[1]), Value):  # input + constant: part of a normalization
            return self.affine(n)
        a, b = self.tensor(n, n.args[0]), self.tensor(n, n.args[1])
        if _val(n.args[0]).shape != _val(n.args[1]).shape:
            raise self.refuse(n, "a broadcasting add (the operands' shapes differ)")
        for main, other in ((a, b), (b, a)):
            layer = self.fusable(main, ("conv", "dense"))
            if layer is not None and not layer.relu and not layer.residual and other.node != layer.name:
                layer.residual = other.node
                self.nodes.remove(layer)
                self.nodes.append(layer)  # now after its residual's producer
                return replace(main, nonneg=False, end=n)
        node = Node(self.unique("add"), "add", [a.node, b.node])
        return self.emit(node, n, nonneg=False, flat=a.flat)

    def cat(self, n: fx.Node) -> Value:
        xs = [self.tensor(n, a) for a in n.args[0]]
        dim = int(_arg(n, 1, "dim", 0))
        if dim not in (1, -3) or any(x.flat for x in xs):
            raise self.refuse(n, f"concatenation along dim {dim} (only along the channels of NCHW activations)")
        nonneg = all(x.nonneg for x in xs)
        node = Node(self.unique("cat"), "cat", [x.node for x in xs], relu=nonneg)
        return self.emit(node, n, nonneg=nonneg, flat=False)

    def _pool(self, n: fx.Node, x: Value, op: str, k: int, stride: int, pad: int, check: bool = True) -> Value:
        if x.flat:
            raise self.refuse(n, "pooling needs an NCHW activation")
        h, w = self.values_shape(n.args[0])[1:]
        if h + 2 * pad < k or w + 2 * pad < k:
            raise self.refuse(n, f"a {k}×{k} window larger than the {h}×{w} input")
        node = Node(self.unique(op), op, [x.node], stride=stride, padding=pad, kernel=k, relu=x.nonneg)
        expected = (k, stride, pad)
        out = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        if check and tuple(_val(n).shape[2:4]) != out:
            raise self.refuse(n, f"ceil_mode changes the output size ({tuple(_val(n).shape[2:4])} vs {out}) "
                                 f"for kernel/stride/padding {expected}")
        return self.emit(node, n, nonneg=x.nonneg, flat=False)

    def values_shape(self, a: fx.Node) -> tuple[int, ...]:
        return _per_sample(a)

    def pool(self, n: fx.Node) -> Value | tuple:
        x = self.tensor(n, n.args[0])
        is_max = "max_pool" in str(n.target)
        k = self.square(n, n.args[1], "kernel size")
        stride = self.square(n, _arg(n, 2, "stride", []), "stride", default=k)
        pad = self.square(n, _arg(n, 3, "padding", 0), "padding")
        if is_max:
            dilation = _arg(n, 4, "dilation", 1)
            if any(int(d) != 1 for d in (dilation if isinstance(dilation, (list, tuple)) else [dilation])):
                raise self.refuse(n, f"dilation {dilation} is not supported")
        else:
            if pad and not _arg(n, 5, "count_include_pad", True):
                raise self.refuse(n, "count_include_pad=False with padding (the divisor changes at the borders)")
            if _arg(n, 6, "divisor_override") is not None:
                raise self.refuse(n, "divisor_override is not supported")
        out = self._pool(n, x, "maxpool" if is_max else "avgpool", k, stride, pad)
        return (out, None) if str(n.target).endswith("with_indices.default") else out

    def adaptive(self, n: fx.Node) -> Value | tuple:
        x = self.tensor(n, n.args[0])
        is_max = "max" in str(n.target)
        h, w = _per_sample(n.args[0])[1:]
        oh, ow = (list(n.args[1]) * 2)[:2] if isinstance(n.args[1], (list, tuple)) else (n.args[1], n.args[1])
        oh, ow = int(oh or h), int(ow or w)
        if (oh, ow) == (1, 1) and not is_max:
            out = self._gap(n, x)
        elif h % oh == 0 and w % ow == 0 and h // oh == w // ow:
            out = self._pool(n, x, "maxpool" if is_max else "avgpool", h // oh, h // oh, 0)
        else:
            raise self.refuse(n, f"adaptive pooling of {h}×{w} to {oh}×{ow} (windows of unequal size)")
        return (out, None) if is_max else out

    def _gap(self, n: fx.Node, x: Value) -> Value:
        if x.flat:
            raise self.refuse(n, "global pooling needs an NCHW activation")
        return self.emit(Node(self.unique("gap"), "gap", [x.node], relu=x.nonneg), n, nonneg=x.nonneg, flat=True)

    def reduce(self, n: fx.Node) -> Value:
        x = self.tensor(n, n.args[0])
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if x.flat or sorted(int(d) % 4 for d in (dims or [])) != [2, 3]:
            raise self.refuse(n, f"a reduction over dims {dims} (only the global pool over H and W)")
        if str(n.target) == "aten.mean.dim":
            return self._gap(n, x)
        h, w = _per_sample(n.args[0])[1:]
        if h != w:
            raise self.refuse(n, f"a global max pool of a non-square {h}×{w} activation")
        pooled = self._pool(n, x, "maxpool", h, h, 0, check=False)
        if len(_val(n).shape) == 2:  # keepdim=False: [N, C]
            return self.emit(Node(self.unique("flatten"), "flatten", [pooled.node]), n, pooled.nonneg, True)
        return pooled

    def identity(self, n: fx.Node) -> Value:
        x = self.tensor(n, n.args[0], normalized_ok=True)
        if "dropout" in str(n.target) and _arg(n, 2, "train", False):
            raise self.refuse(n, "dropout in training mode")
        if _val(n).dtype != torch.float32:
            raise self.refuse(n, f"a conversion to {_val(n).dtype} (the importer works in float32)")
        return replace(x, end=n, open=x.open and len(x.end.users) == 1)

    def reshape(self, n: fx.Node) -> Value:
        x = self.tensor(n, n.args[0])
        shape = tuple(_val(n).shape)
        same = math.prod(shape[1:]) == math.prod(_per_sample(n.args[0]))
        if len(shape) == 2 and same and shape[0] == _val(n.args[0]).shape[0]:
            if x.flat:  # already [N, C] here (e.g. a global pool's [N, C, 1, 1] viewed as [N, C])
                return replace(x, end=n, open=x.open and len(x.end.users) == 1)
            node = Node(self.unique("flatten"), "flatten", [x.node], relu=False)
            return self.emit(node, n, nonneg=x.nonneg, flat=True)
        if shape == tuple(_val(n.args[0]).shape):
            return replace(x, end=n, open=x.open and len(x.end.users) == 1)
        raise self.refuse(n, f"a reshape to {list(shape)} (only a flatten to [N, -1], before a linear layer)")

    # ---- walk -------------------------------------------------------------------------------------
    def run(self) -> fx.Node:
        """Translate every live ATen node; returns the ATen node of the model's output."""
        out_node = next(n for n in self.ep.graph.nodes if n.op == "output")
        outs = out_node.args[0]
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        if len(outs) != 1 or not isinstance(outs[0], fx.Node):
            raise ModelImportError("output", "output", "the model's forward",
                                   f"the model must return one tensor of logits, it returns {len(outs)} values")
        live = _live(outs[0])
        for n in self.ep.graph.nodes:
            if n.op != "call_function" or n not in live:
                continue
            if n.target is operator.getitem:
                src = self.values.get(n.args[0])
                if not isinstance(src, tuple) or src[n.args[1]] is None:
                    raise self.refuse(n, "indexing a value that is not a supported op's tuple result")
                self.values[n] = src[n.args[1]]
                continue
            handler = self.handlers.get(str(n.target))
            if handler is None:
                raise self.refuse(n, HINTS.get(str(n.target).split(".")[1].rstrip("_"), "this op is not supported"))
            self.values[n] = handler(n)
        return outs[0]

    def graph(self, out: fx.Node, num_classes: int | None) -> Graph:
        v = self.values[out]
        if not isinstance(v, Value) or v.node == "input":
            raise ModelImportError(str(out.target), out.name, source_line(out.meta.get("stack_trace")),
                                   "the model's output is not computed by a layer")
        last = self.by_name[v.node]
        shape = tuple(_val(out).shape)
        where = (str(out.target), out.name, source_line(out.meta.get("stack_trace")))
        if len(shape) != 2 or (num_classes is not None and shape[1] != num_classes):
            raise ModelImportError(*where, f"the output has shape {list(shape)}, expected [N, "
                                   f"{num_classes if num_classes is not None else 'classes'}]")
        if last.op != "dense" or self.nodes[-1] is not last:
            raise ModelImportError(*where, "the model must end in a linear layer (its int32 accumulator is the "
                                   f"integer model's output), not {last.op}")
        if last.relu or last.residual:
            raise ModelImportError(*where, "the final linear layer's output must not pass through an activation "
                                   "or a residual add (the logits are its accumulator)")
        for node in self.nodes:
            if node.has_weight:
                node.weight = self.w64[node.name].float().numpy().copy()
                node.bias = self.b64[node.name].float().numpy().copy()
        return Graph(self.nodes, self.input_shape, int(shape[1]))

    def check_shapes(self, g: Graph) -> None:
        """Every node's shape as the graph computes it equals torch's (a translation bug would show here)."""
        for node in g.nodes:
            n = self.fx_of[node.name]
            want = _per_sample(n)
            if math.prod(g.shapes[node.name]) != math.prod(want):
                raise ModelImportError(str(n.target), n.name, source_line(n.meta.get("stack_trace")),
                                       f"internal: translated shape {g.shapes[node.name]} ≠ torch's {want}")


def _live(out: fx.Node) -> set[fx.Node]:
    """The nodes the output depends on (dead ones, e.g. a max pool's unused indices, are skipped)."""
    seen: set[fx.Node] = set()
    stack = [out]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def float_matches(g: Graph, model: torch.nn.Module, x: torch.Tensor, atol: float = 1e-4) -> float:
    """Largest |graph(x) − model(x)| (the importer refuses a graph that does not reproduce the model)."""
    from laaq.graph import run_float

    with torch.no_grad():
        ref = model(x)
        got = run_float(g, x)
    return float(np.abs(got.numpy().astype(np.float64) - ref.numpy().astype(np.float64)).max())
