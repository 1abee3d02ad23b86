"""A blocked-layout integer lowering for CPUs with integer dot-product (or multiply-add) instructions.

Same computation as :func:`harness.lower.nchw.lower_integer` (and :mod:`laaq.quant.integer`), bit for
bit, but convolutions are written as ``topi.nn.conv2d_NCHWc_int8``: activations live in
``[N, C/cb, H, W, cb]``, kernels are pre-packed in numpy as ``[O/ob, C/cb, kh, kw, cb/k, ob, k]``
and channel counts are padded with zeros to the block sizes (padded channels carry exact zeros
through requantization and are sliced off before a flatten / global pool). The innermost
``ob`` output channels × ``k`` input channels are tensorized with one instruction pattern, chosen
per target by a :class:`harness.backend.schemes.Scheme` (the table of schemes is there).

The ``−128`` offset of the Arm schemes: ``conv(a, w) = conv(a − 128, w) + 128·Σ_{c,kh,kw} w[o]``
holds exactly when the *padded* input is ``a = 0`` too, so convolutions pad with the stored value
of zero (``−128``), not with 0, and the per-channel constant goes into the int32 bias.

The hand schedule of these convolutions is :mod:`harness.backend.schedule`.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, topi

from harness.backend import gemv
from harness.backend.schemes import VNNI, Scheme
from harness.lower.blocked_ops import add_blocked, blocked_bias, cat_blocked, grouped_acc, pool_blocked
from harness.lower.nchw import requantize_expr
from laaq.quant.quantizers import QNode, QuantizedGraph


def _const(a: np.ndarray) -> relax.Constant:
    return relax.const(tvm.runtime.tensor(np.ascontiguousarray(a)))


def _ceil(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def pack_kernel(w: np.ndarray, cb: int, scheme: Scheme = VNNI) -> np.ndarray:
    """int8 ``[O, C, kh, kw]`` → ``[Op/ob, Cp/cb, kh, kw, cb/k, ob, k]`` (zero-padded O and C)."""
    ob, kb = scheme.oc_block, scheme.k_block
    o, c, kh, kw = w.shape
    op, cp = _ceil(o, ob), _ceil(c, cb)
    wp = np.zeros((op, cp, kh, kw), dtype=scheme.weight_dtype)
    wp[:o, :c] = w
    # input channel = ic_outer*cb + ic_f_inner*k + ic_s_inner (topi's data indexing)
    wp = wp.reshape(op // ob, ob, cp // cb, cb // kb, kb, kh, kw)
    return np.ascontiguousarray(wp.transpose(0, 2, 5, 6, 3, 1, 4))


def subbyte_width(bits: int) -> int:
    """Storage width of a packed weight: 2 bits for ≤ 2-bit layers (four per byte), 4 for 3–4-bit ones
    (two per byte); 0 = not packed (5–8-bit layers keep one byte per weight)."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 0


def pack_subbyte(kernel: np.ndarray, width: int) -> np.ndarray:
    """int8 packed kernel ``[..., ob, k]`` → uint8 ``[..., ob·k·width/8]``: each ``ob × k`` tile (the block one
    instruction reads) flattened to ``t = o·k + j`` and split in ``8/width`` contiguous runs of ``L`` values;
    run ``f`` goes into bit field ``f`` of bytes ``0..L−1`` (two's complement). Rebuilding a run is one
    contiguous load, a shift and a sign extension — vector code, no gathers. Exact for
    |w| < 2^(width−1), which the plan's symmetric range guarantees (``b``-bit weights:
    |w| ≤ 2^(b−1) − 1 ≤ 2^(width−1) − 1 for b ≤ width; checked here)."""
    per = 8 // width
    tile = kernel.shape[-2] * kernel.shape[-1]
    if tile % per:
        raise ValueError(f"a {kernel.shape[-2]}×{kernel.shape[-1]} kernel tile does not split into {per} runs")
    if np.abs(kernel.astype(np.int32)).max(initial=0) >= 2 ** (width - 1):
        raise ValueError(f"weights up to {np.abs(kernel).max()} do not fit {width}-bit fields")
    fields = (kernel.astype(np.int16) & (2 ** width - 1)).astype(np.uint8)
    fields = fields.reshape(*kernel.shape[:-2], per, tile // per)
    packed = np.zeros((*kernel.shape[:-2], tile // per), dtype=np.uint8)
    for f in range(per):
        packed |= (fields[..., f, :] << (width * f)).astype(np.uint8)
    return np.ascontiguousarray(packed)


def _unpack_subbyte(packed: te.Tensor, ob: int, k: int, width: int, dtype: str) -> te.Tensor:
    """The kernel ``[..., ob, k]`` a conv reads, rebuilt from :func:`pack_subbyte`'s bytes at run time
    (sign-extended field: ``((b >> shift & mask) ^ half) − half``). A stage of its own in the conv's
    function (never folded into a constant, never inlined into the tensorized block): one pass over the
    packed weights per call."""
    assert dtype == "int8", "packed kernels are rebuilt as int8"
    run = int(packed.shape[-1])

    def f(*i):
        t = i[-2] * k + i[-1]
        # field f of byte l, where t = f·run + l; sign-extended without any wrap-around: (byte >> shift) & mask ∈
        # [0, 2^width), then (v ^ half) − half ∈ [−half, half). Each field is its own branch with a *constant*
        # shift: a shift by the loop-dependent amount ``t // run · width`` was miscompiled by LLVM for AVX2
        # (wrong bytes in larger kernels); after the schedule splits t into (f, l) one branch is taken per run.
        mask, half = tvm.tirx.const(2 ** width - 1, "int32"), tvm.tirx.const(2 ** (width - 1), "int32")
        value = None
        for field in range(8 // width):
            v = ((packed[(*i[:-2], t - field * run)].astype("int32") >> (field * width)) & mask ^ half) - half
            value = v if value is None else tvm.tirx.if_then_else(t >= field * run, v, value)
        return value.astype("int8")

    return te.compute((*packed.shape[:-1], ob, k), f, name="unpack_weights")


def blocked_dense_weight(w: np.ndarray, c: int, h: int, w_: int, cb: int) -> np.ndarray:
    """Dense weights ``[O, C·H·W]`` (torch's NCHW flatten order) → 1×1-conv weights ``[O, Kp, 1, 1]``
    whose columns follow the blocked activation order ``(c // cb, h, w, c % cb)``; columns of padded
    channels are zero. Lets a dense read the blocked activation as is (no transpose back to NCHW)."""
    o = w.shape[0]
    cp = _ceil(c, cb)
    full = np.zeros((o, cp, h, w_), dtype=w.dtype)
    full[:, :c] = w.reshape(o, c, h, w_)
    blocked = full.reshape(o, cp // cb, cb, h, w_).transpose(0, 1, 3, 4, 2).reshape(o, -1)
    return np.ascontiguousarray(blocked.reshape(o, -1, 1, 1))


def offset_bias(b_q: np.ndarray, w_q: np.ndarray, offset: int) -> np.ndarray:
    """Bias that undoes a stored-input offset: ``conv(a + off, w) − off·Σw = conv(a, w)``."""
    wsum = w_q.reshape(len(w_q), -1).astype(np.int64).sum(1).reshape((-1,) + (1,) * (b_q.ndim - 1))
    return (b_q.astype(np.int64) - offset * wsum).astype(np.int32)


def _pad_vec(v: np.ndarray, n: int, dtype) -> np.ndarray:
    out = np.zeros(n, dtype=dtype)
    out[: len(v)] = v
    return out


def _store(v: te.Tensor | tvm.tirx.PrimExpr, offset: int, dtype: str):
    """A true activation value → its stored form (offset, then narrowed to the scheme's dtype)."""
    if offset:
        return (v.astype("int16") + tvm.tirx.const(offset, "int16")).astype(dtype)
    return v.astype(dtype)


def _pack_input(x: te.Tensor, cb: int, offset: int = 0, dtype: str = "uint8") -> te.Tensor:
    """uint8 NCHW network input → stored ``[N, C/cb, H, W, cb]`` (padded channels = stored zero)."""
    n, c, h, w = (int(s) for s in x.shape)
    cp = _ceil(c, cb)
    return te.compute((n, cp // cb, h, w, cb),
                      lambda i, co, y, z, ci: tvm.tirx.if_then_else(
                          co * cb + ci < c, _store(x[i, co * cb + ci, y, z], offset, dtype),
                          tvm.tirx.const(offset, dtype)),
                      name="pack_input")


def _to_stored(a: te.Tensor, offset: int, dtype: str) -> te.Tensor:
    return te.compute(a.shape, lambda *i: _store(a(*i), offset, dtype), name="to_stored")


def _to_stored_blocks(a: te.Tensor, ib: int, offset: int, dtype: str) -> te.Tensor:
    """``[N, C/cb, H, W, cb]`` true values → stored ``[N, Cp/ib, H, W, ib]``: the input of a scheme whose
    intrinsic reads ``ib`` channels at once (an int16 chain). Channels beyond ``C`` (up to ``Cp``, a
    multiple of ``ib``) hold the stored zero and meet zero weights (:func:`pack_kernel` pads them)."""
    n, cbs, h, w, cb = (int(s) for s in a.shape)
    cp = _ceil(cbs * cb, ib)
    return te.compute((n, cp // ib, h, w, ib),
                      lambda i, co, y, z, ci: tvm.tirx.if_then_else(
                          co * ib + ci < cbs * cb,
                          _store(a[i, (co * ib + ci) // cb, y, z, (co * ib + ci) % cb], offset, dtype),
                          tvm.tirx.const(offset, dtype)),
                      name="to_stored")


def conv_block(data: te.Tensor, kernel: te.Tensor, stride, padding: tuple[int, int], pad_value: int,
               n_elems: int, packed_width: int = 0, weight_dtype: str = "int8", oc_block: int = 16) -> te.Tensor:
    """Pad with the stored value of zero (``pad_value``), then ``conv2d_NCHWc_int8`` without padding.
    ``packed_width``: ``kernel`` holds :func:`pack_subbyte` bytes, unpacked in this function."""
    if packed_width:
        kernel = _unpack_subbyte(kernel, oc_block, n_elems, packed_width, weight_dtype)
    ph, pw = padding
    if ph or pw:
        data = topi.nn.pad(data, (0, 0, ph, pw, 0), (0, 0, ph, pw, 0), pad_value=pad_value, name="data_pad")
    return topi.nn.conv2d_NCHWc_int8(data, kernel, stride, 0, 1, "", "", "int32", n_elems=n_elems)


def _to_nchw(bb: relax.BlockBuilder, a: relax.Expr, channels: int) -> relax.Expr:
    n, co, h, w, cb = (int(s) for s in a.ty.shape)
    t = bb.emit(relax.op.permute_dims(a, [0, 1, 4, 2, 3]))
    t = bb.emit(relax.op.reshape(t, (n, co * cb, h, w)))
    if co * cb != channels:
        t = bb.emit(relax.op.strided_slice(t, axes=[1], begin=[0], end=[channels]))
    return t


def _requant(bb: relax.BlockBuilder, acc: relax.Expr, q: QNode, shape: tuple[int, ...], width: int,
             residual: relax.Expr | None) -> relax.Expr:
    m = q.mult.astype(np.int64)
    mult = (m if m.size == 1 else _pad_vec(m, width, np.int64)).reshape(shape if m.size > 1 else (1,) * len(shape))
    return requantize_expr(bb, acc, mult, q, residual)


def streams_dense(scheme: Scheme, batch: int) -> bool:
    """Whether a dense layer on blocked activations runs the weight-streaming kernel (:mod:`harness.backend.gemv`)
    instead of the tensorized 1×1 conv: on schemes that have it, at any batch it can chunk (≤ 8 images per
    pass over a weight vector; at batch 1 the time is the time to read the weights, which 4- and 2-bit
    storage halves and quarters)."""
    return scheme.streaming_dense and gemv.streams(batch)


def _streamed_dense(bb: relax.BlockBuilder, a: relax.Expr, w4d: np.ndarray, bits: int) -> relax.Expr:
    """The dense's int32 accumulator ``[N, Op/16, 1, 1, 16]`` from the weight-streaming kernel: weights stored
    in the narrowest field that holds the plan's width (8, 4 or 2 bits), unpacked in registers."""
    n, kb, _, _, cb = (int(s) for s in a.ty.shape)
    w2d = w4d.reshape(w4d.shape[0], -1)
    width = 8 if bits > 4 else subbyte_width(bits)
    kernel = gemv.pack_gemv(w2d, width)
    op = kernel.shape[0] * gemv.LANES
    flat = bb.emit(relax.op.reshape(a, (n, kb * cb)))
    # opaque: never fused with its epilogue, so the VNNI schedule can swap the whole function for its kernel
    acc = bb.emit_te(gemv.dense_gemv_te, flat, _const(kernel), width, primfunc_name_hint=f"dense_gemv_u{width}",
                     primfunc_attrs={gemv.ATTR: width, "op_pattern": 8})
    return bb.emit(relax.op.reshape(acc, (n, op // gemv.LANES, 1, 1, gemv.LANES)))


def _blocked_acc(bb: relax.BlockBuilder, a: relax.Expr, stored: bool, signed_in: bool, name: str,
                 w4d: np.ndarray, q: QNode, stride, padding: tuple[int, int], scheme: Scheme,
                 pack_weights: bool = False, dense: bool = False) -> tuple[relax.Expr, tuple[int, ...]]:
    """One tensorized conv (a dense is a 1×1 one) on a blocked input: convert the input to the
    scheme's stored form unless it already is, pack ``w4d`` ``[O, C, kh, kw]``, add the bias corrected
    for the storage offset. Returns the int32 accumulator ``[N, Op/ob, OH, OW, ob]`` and the shape
    per-channel constants broadcast with. ``dense``: the layer is a dense (its weights may be streamed)."""
    offset = scheme.signed_act_offset if signed_in else scheme.act_offset
    if signed_in and scheme.act_dtype == "uint8" and not offset:
        raise ValueError(f"{scheme.name}: layer {name!r} takes signed activations; "
                         "this scheme multiplies unsigned activations only")
    bound = scheme.max_abs_weight
    if np.abs(q.w_q).max(initial=0) > bound:
        # the scheme's exactness rests on this bound (vpmaddubsw: 2·255·max|w| ≤ 32,767 needs max|w| ≤ 64;
        # the NEON int16 chain of 4: 4·128·max|w| ≤ 32,767 needs max|w| ≤ 63)
        raise ValueError(f"{scheme.name}: layer {name!r} has |w| up to {np.abs(q.w_q).max()} > {bound}: "
                         f"not exact with {scheme.instruction}")
    ib = scheme.in_block
    if ib is not None and int(a.ty.shape[4]) != ib:  # an int16 chain reads ib channels per intrinsic call
        assert not stored, f"{name}: network input packed in blocks of {int(a.ty.shape[4])}, not {ib}"
        a = bb.emit_te(_to_stored_blocks, a, ib, offset, scheme.act_dtype, primfunc_name_hint="to_stored")
    elif not stored and (offset or str(a.ty.dtype) != scheme.act_dtype):  # else: already its own stored form
        a = bb.emit_te(_to_stored, a, offset, scheme.act_dtype, primfunc_name_hint="to_stored")
    ob = scheme.oc_block
    op = _ceil(q.w_q.shape[0], ob)
    bshape = (1, op // ob, 1, 1, ob)
    bias = blocked_bias(offset_bias(q.b_q, q.w_q, offset), op, ob)
    if dense and streams_dense(scheme, int(a.ty.shape[0])):
        acc = _streamed_dense(bb, a, w4d, q.setting.bits if q.setting is not None else 8)
        return bb.emit(relax.op.add(acc, _const(bias))), bshape
    kernel = pack_kernel(w4d, int(a.ty.shape[4]), scheme)
    width = subbyte_width(q.setting.bits) if pack_weights and q.setting is not None else 0
    if width and scheme.weight_dtype == "int8":
        kernel = pack_subbyte(kernel, width)
    else:
        width = 0
    acc = bb.emit_te(conv_block, a, _const(kernel), stride, padding, offset, scheme.k_block, width,
                     scheme.weight_dtype, ob, primfunc_name_hint="conv2d_nchwc_int8")
    return bb.emit(relax.op.add(acc, _const(bias))), bshape


def layer_scheme(scheme: Scheme, q: QNode) -> Scheme:
    """The scheme of one weighted layer: the narrowest exact one of ``scheme``'s family for its plan width."""
    return scheme.for_bits(q.setting.bits if q.setting is not None else 8)


def _input_scheme(qg: QuantizedGraph, scheme: Scheme) -> Scheme:
    """The network input is packed once, in the stored form of the layer that reads it."""
    first = next((n for n in qg.graph.nodes if "input" in n.inputs), None)
    return layer_scheme(scheme, qg.qnodes[first.name]) if first is not None and first.op == "conv" else scheme


def lower_integer_nchwc(qg: QuantizedGraph, batch: int, scheme: Scheme = VNNI,
                        blocked_input: bool = False, pack_weights: bool = False) -> tvm.IRModule:
    """``main(x: uint8[batch, C, H, W]) -> int32[batch, classes]``, convolutions in NCHW[x]c blocks.

    Between layers activations hold their *true* values (uint8 / int8, as in the reference), so
    residual adds, pooling and flatten are unchanged; a conv input is converted to its layer's
    stored form just before the conv (an element-wise op that fuses into the producer). Each layer
    takes the narrowest exact scheme of ``scheme``'s family for its weight width (:func:`layer_scheme`).

    ``blocked_input``: ``x`` is already a blocked activation ``[batch, C/ob, H, W, ob]`` of true uint8 values,
    as a layer inside the model receives it — how one layer is timed alone (:mod:`harness.layer_latency`).

    ``pack_weights``: layers of ≤ 4 bits store their kernels packed (two 4-bit or four 2-bit fields per
    byte, :func:`pack_subbyte`) and unpack them inside the conv's function at run time — a smaller
    artefact for one extra pass over those weights per call.
    """
    ob = scheme.oc_block
    assert all(s.oc_block == ob for s in scheme.family), "a scheme family shares one output-channel block"
    first = _input_scheme(qg, scheme)
    bb = relax.BlockBuilder()
    c_in = qg.graph.input_shape[0]
    in_shape = tuple(qg.graph.input_shape)
    if blocked_input and len(in_shape) == 1:  # a flat activation, e.g. after a global pool
        shape, in_layout = (batch, in_shape[0]), "flat"
    elif blocked_input:
        shape, in_layout = (batch, _ceil(in_shape[0], ob) // ob, *in_shape[1:], ob), "nchwc"
    else:
        shape, in_layout = (batch, *in_shape), "stored"
    x = relax.Var("x", relax.TensorType(shape, "uint8"))
    signed = {"input": False}
    with bb.function("main", [x]):
        with bb.dataflow():
            # env: name -> (expr, layout "nchwc" | "stored" | "flat", true channel count)
            env: dict[str, tuple[relax.Expr, str, int]] = {
                "input": (x, in_layout, c_in) if blocked_input else
                (bb.emit_te(_pack_input, x, first.first_cb, first.act_offset, first.act_dtype,
                            primfunc_name_hint="pack_input"), "stored", c_in)}
            def true_blocked(name: str) -> tuple[relax.Expr, str, int]:
                """An activation as true values in blocks (the network input is stored in its first layer's form)."""
                if env[name][1] != "stored":
                    return env[name]
                if "input:true" not in env:
                    env["input:true"] = (bb.emit_te(_pack_input, x, ob, 0, "uint8", primfunc_name_hint="pack_input"),
                                         "nchwc", c_in)
                return env["input:true"]

            for n in qg.graph.nodes:
                q = qg.qnodes[n.name]
                signed[n.name] = q.out_signed
                a, layout, ch = env[n.inputs[0]]
                if n.op in ("maxpool", "avgpool", "add", "cat") or (n.op == "gap" and layout == "stored"):
                    ins = [true_blocked(i) for i in n.inputs]
                    assert all(e[1] == ("nchwc" if n.op != "add" else ins[0][1]) for e in ins), f"{n.name}: layouts"
                    if n.op == "cat":
                        env[n.name] = (cat_blocked(bb, q, [_to_nchw(bb, e[0], e[2]) for e in ins], ob), "nchwc",
                                       qg.graph.shapes[n.name][0])
                    elif n.op == "add":
                        env[n.name] = (add_blocked(bb, q, [e[0] for e in ins]), ins[0][1], ins[0][2])
                    elif n.op == "gap":
                        a, layout, ch = ins[0]
                    else:
                        env[n.name] = (pool_blocked(bb, q, ins[0][0]), "nchwc", ch)
                    if n.op != "gap":
                        continue
                if n.op == "conv" and n.groups > 1:
                    acc, bshape = grouped_acc(bb, a, first.act_offset if layout == "stored" else 0, q, ob)
                    res = true_blocked(n.residual)[0] if n.residual else None
                    env[n.name] = (_requant(bb, acc, q, bshape, bshape[1] * ob, res), "nchwc", q.w_q.shape[0])
                    continue
                if n.op == "flatten":
                    assert layout != "stored", "flatten of the network input is not supported"
                    # blocked input: nothing to do — the dense after it reads the blocks directly
                    # (its weight columns are permuted to the blocked order, see blocked_dense_weight)
                    env[n.name] = (a, layout, ch) if layout == "nchwc" else (
                        bb.emit(relax.op.reshape(a, (batch, -1))), "flat", 0)
                    continue
                if n.op == "gap":
                    assert layout == "nchwc"
                    s = bb.emit(relax.op.sum(relax.op.astype(a, "int32"), axis=[2, 3]))  # [N, C/ob, ob]
                    s = bb.emit(relax.op.reshape(s, (batch, -1)))
                    if int(s.ty.shape[1]) != ch:
                        s = bb.emit(relax.op.strided_slice(s, axes=[1], begin=[0], end=[ch]))
                    env[n.name] = (_requant(bb, s, q, (1, -1), ch, None), "flat", ch)
                    continue
                if n.op == "conv" or layout == "nchwc":  # a dense on blocked activations is a 1×1 conv
                    if n.op == "conv":
                        assert layout in ("nchwc", "stored"), "a conv after a flatten is not supported"
                        pad = n.padding if isinstance(n.padding, (tuple, list)) else (n.padding, n.padding)
                        inp, w4d, stride, pad = a, q.w_q, n.stride, tuple(pad)
                    else:  # [N, C/cb, H, W, cb] read as [N, K/ob, 1, 1, ob], weight columns permuted to match
                        _, cblocks, h, w_, cbk = (int(s_) for s_ in a.ty.shape)
                        inp = bb.emit(relax.op.reshape(a, (batch, cblocks * h * w_ * cbk // ob, 1, 1, ob)))
                        w4d, stride, pad = blocked_dense_weight(q.w_q, ch, h, w_, cbk), 1, (0, 0)
                    acc, bshape = _blocked_acc(bb, inp, layout == "stored", signed[n.inputs[0]], n.name, w4d, q,
                                               stride, pad, layer_scheme(scheme, q), pack_weights, n.op == "dense")
                    o, op = q.w_q.shape[0], bshape[1] * ob
                    if q.final and n.op == "conv":
                        env[n.name] = (_to_nchw(bb, acc, o), "nchw", o)
                    elif q.final:
                        flat = bb.emit(relax.op.reshape(acc, (batch, op)))
                        if op != o:
                            flat = bb.emit(relax.op.strided_slice(flat, axes=[1], begin=[0], end=[o]))
                        env[n.name] = (flat, "flat", o)
                    else:
                        res = true_blocked(n.residual)[0] if n.residual else None
                        env[n.name] = (_requant(bb, acc, q, bshape, op, res), "nchwc", o)
                    continue
                # dense on a flat (true-layout) input, e.g. after a global pool: small, a plain matmul
                assert layout == "flat", "dense layers take a flattened input"
                acc = bb.emit(relax.op.matmul(a, relax.op.permute_dims(_const(q.w_q)), out_dtype="int32"))
                acc = bb.emit(relax.op.add(acc, _const(q.b_q.astype(np.int32).reshape(1, -1))))
                if q.final:
                    env[n.name] = (acc, "flat", q.w_q.shape[0])
                    continue
                res = env[n.residual][0] if n.residual else None
                env[n.name] = (_requant(bb, acc, q, (1, -1), q.w_q.shape[0], res), "flat", q.w_q.shape[0])
            out = bb.emit_output(env[qg.graph.output][0])
        bb.emit_func_output(out)
    return bb.get()
