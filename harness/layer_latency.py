"""Per-layer latency tables measured on the target's device: what each weight width costs *there*.

TVM 0.27 has no Relax VM profiler, so each weighted layer is compiled as a module of its own — the
layer with its requantization, in the layout its target's lowering gives it inside the model (a
blocked ``[N, C/16, H, W, 16]`` activation in, the requantized blocked activation out; the first layer
reads the network input and packs it, as the model does) — and timed with ``time_evaluator`` on the
target's device (the same :class:`harness.devices.base.Session` as ``bench``). Widths that share a
kernel (same scheme: e.g. 2–7 bits on AVX2 all run ``vpmaddubsw``) share a timing: the weights are
arguments of one kernel, not part of it. Two simplifications, stated in every table: a residual add
is not in the layer's module (its source is another layer), and the ``to_stored`` conversion that the
model fuses into the previous layer's epilogue is this module's own kernel.

Tables are cached per (target, layer structure, batch, scheme) under ``$(cache_root)/latency/`` and
checked against the whole model: :func:`consistency` reports Σ layers / whole model (the issue's bound
is ±15 %). Emulated boards produce tables labelled ``emulated``: they test the mechanism only and must
never pick a real board's plan.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import tvm

from harness.compile import compile_module
from harness.lower import lower_integer, lower_integer_nchwc
from harness.lower.blocked import streams_dense, subbyte_width
from harness.measure import LatencyProtocol, latency
from harness.results import atomic_write_text
from laaq.cache import cache_root
from laaq.graph import Graph, Node
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import QNode, QuantizedGraph, quantize_graph

if TYPE_CHECKING:
    from harness.devices.base import Session
    from harness.profile import TargetProfile


@dataclass(frozen=True)
class LayerTime:
    """One row of a latency table."""

    layer: str
    kind: str  # conv | dense
    bits: int
    scheme: str  # the kernel family the width gets on this target ("nchw" without a blocked scheme)
    batch: int
    median_ms: float
    p90_ms: float
    measured_as: str  # native | emulated
    cached: bool = False


def scheme_name(profile: TargetProfile, bits: int, streamed: bool = False) -> str:
    """The kernel a layer of ``bits`` gets: its scheme, plus the packed field width where weights are packed;
    ``streamed``: a dense on the weight-streaming kernel, whose storage (8/4/2-bit fields) follows the width."""
    if profile.scheme is None:
        return "nchw"
    if streamed:
        return f"{profile.scheme.name}+stream{8 if bits > 4 else subbyte_width(bits)}"
    width = subbyte_width(bits) if profile.pack_weights else 0
    return profile.scheme.for_bits(bits).name + (f"+packed{width}" if width else "")


def _layer_graph(graph: Graph, node: Node) -> tuple[Graph, bool]:
    """``node`` alone (residual dropped), reading what it reads inside the model; a trailing flatten keeps
    a non-final layer's requantization in the module. Returns (graph, reads the blocked activation)."""
    src = node.inputs[0]
    blocked_in = src != "input"
    if node.op == "dense" and src != "input":
        producer = graph.node(src)
        if producer.op == "flatten":  # reads the blocked conv activation directly
            in_shape = graph.input_shape_of(producer)
        elif producer.op == "dense":  # reads the previous dense's blocked [N, K/16, 1, 1, 16] output
            in_shape = (int(np.prod(graph.shapes[src])), 1, 1)
        else:  # e.g. after a global pool: a flat activation
            in_shape = (int(np.prod(graph.shapes[src])),)
        head = [Node("flat_in", "flatten", ["input"])] if len(in_shape) == 3 else []
        nodes = [*head, replace(node, inputs=[head[0].name if head else "input"], residual=None)]
    else:
        in_shape = graph.input_shape_of(node)
        nodes = [replace(node, inputs=["input"], residual=None)]
    final = node.name == graph.output
    if not final:
        nodes.append(Node("out", "flatten", [node.name]))
    return Graph(nodes, tuple(in_shape), graph.num_classes), blocked_in


def _layer_qgraph(sub: Graph, node: Node, q: QNode) -> QuantizedGraph:
    """The sub-graph with the model's own integer parameters for the layer (same kernel, same constants)."""
    qnodes = {n.name: replace(q, node=n, res_mult=0) if n.name == node.name else
              QNode(n, False, q.s_in, q.s_in, final=n.name == sub.output) for n in sub.nodes}
    return QuantizedGraph(sub, QuantPlan({node.name: q.setting}), qnodes, {})


def _code_digest() -> str:
    """Digest of the code that writes the kernels (lowering, schedules, intrinsics): a cached timing of an
    older kernel must not stand in for the current one."""
    root = Path(__file__).resolve().parent
    files = sorted([*(root / "lower").glob("*.py"), *(root / "backend").glob("*.py")])
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]


def _key(profile: TargetProfile, node: Node, in_shape: tuple[int, ...], batch: int, scheme: str) -> str:
    body = json.dumps({"op": node.op, "w": list(node.weight.shape), "stride": node.stride, "pad": node.padding,
                       "in": list(in_shape), "batch": batch, "scheme": scheme, "tvm": tvm.__version__,
                       "target": dict(profile.target.tvm), "threads": profile.threads, "code": _code_digest()},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def table_dir(profile: TargetProfile) -> Path:
    return cache_root() / "latency" / profile.database_name


def _module(qsub: QuantizedGraph, batch: int, profile: TargetProfile, blocked_in: bool) -> tvm.IRModule:
    if profile.scheme is None:  # plain NCHW targets: the layer reads an NCHW uint8 activation, as in the model
        return lower_integer(qsub, batch)
    return lower_integer_nchwc(qsub, batch, profile.scheme, blocked_input=blocked_in,
                               pack_weights=profile.pack_weights)


def _input(mod: tvm.IRModule) -> np.ndarray:
    shape = [int(s) for s in mod["main"].params[0].ty.shape]
    return np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)


def _timed(mod, x: np.ndarray, proto: LatencyProtocol):
    """``latency`` with enough calls per repeat for a microsecond kernel: a repeat of ``proto.number`` calls
    of a 15 µs layer lasts 0.3 ms, which timer and scheduler noise swamp (the same layer read 0.045 and
    0.024 ms); calls per repeat are raised so a repeat lasts ~10 ms (at most 2,000 calls)."""
    probe = latency(mod, x, replace(proto, number=3, repeat=1))
    calls = int(min(2000, max(proto.number, 10.0 / max(probe.median_ms, 1e-3))))
    return latency(mod, x, replace(proto, number=calls))


def layer_table(graph: Graph, profile: TargetProfile, session: Session, bits: tuple[int, ...], batch: int = 1,
                proto: LatencyProtocol | None = None, calib: torch.Tensor | None = None, log=None) -> list[LayerTime]:
    """Time every weighted layer of ``graph`` at each width in ``bits`` on ``session`` (cached per scheme)."""
    proto = proto or LatencyProtocol(warmup=3, number=20, repeat=7)
    if calib is None:  # latency does not depend on weight values: any calibration data gives the same kernels
        calib = torch.rand(16, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    names = [n.name for n in graph.weighted()]
    qgs = {b: quantize_graph(graph, QuantPlan.uniform(names, b), calib) for b in bits}
    out: list[LayerTime] = []
    with tempfile.TemporaryDirectory(prefix="laaq-layers-") as tmp:
        for node in graph.weighted():
            sub, blocked_in = _layer_graph(graph, node)
            streamed = (node.op == "dense" and len(sub.input_shape) == 3 and profile.scheme is not None
                        and streams_dense(profile.scheme, batch))
            timed: dict[str, LayerTime] = {}
            for b in bits:
                scheme = scheme_name(profile, b, streamed)
                if scheme in timed:  # the same kernel: the weights are its arguments, not part of it
                    out.append(replace(timed[scheme], bits=b))
                    continue
                key = _key(profile, node, sub.input_shape, batch, scheme)
                path = table_dir(profile) / f"{key}.json"
                if path.exists():
                    t = LayerTime(**{**json.loads(path.read_text()), "layer": node.name, "bits": b, "cached": True})
                else:
                    mod = _module(_layer_qgraph(sub, node, qgs[b].qnodes[node.name]), batch, profile, blocked_in)
                    art = compile_module(mod, profile, Path(tmp) / f"{key}.so", f"{node.name}-w{b}", batch,
                                         progress=False)
                    s = _timed(session.load(art.path), _input(mod), proto)
                    t = LayerTime(node.name, node.op, b, scheme, batch, round(s.median_ms, 5), round(s.p90_ms, 5),
                                  session.measured_as)
                    atomic_write_text(path, json.dumps(asdict(t)))
                if log:
                    log(f"  {node.name:18s} w{b} {scheme:14s} {t.median_ms:.4f} ms{' (cached)' if t.cached else ''}")
                timed[scheme] = t
                out.append(t)
    return out


def plan_latency(table: list[LayerTime], plan: QuantPlan) -> float:
    """Σ over layers of the table's median at the plan's width (what the latency-aware search adds up)."""
    by = {(t.layer, t.bits): t.median_ms for t in table}
    return sum(by[(name, s.bits)] for name, s in plan.layers.items())


def as_constraint_table(table: list[LayerTime]) -> dict[str, dict[int, float]]:
    """``table[layer][bits] -> ms``: the form :func:`laaq.search.latency_budget` takes."""
    out: dict[str, dict[int, float]] = {}
    for t in table:
        out.setdefault(t.layer, {})[t.bits] = t.median_ms
    return out


def consistency(table: list[LayerTime], plan: QuantPlan, whole_ms: float) -> float:
    """Σ per-layer times at the plan's widths / the whole model's measured time (1.0 = they agree)."""
    return plan_latency(table, plan) / whole_ms


def parse_latency_budget(spec: str) -> tuple[float, bool] | None:
    """``--latency-budget``: "" → None; "0.8x" → (0.8, True: a fraction of the int8 model's latency);
    "0.05" → (0.05, False: milliseconds). Anything else, or a value ≤ 0, is refused with one line."""
    if not spec:
        return None
    try:
        value, fraction = (float(spec[:-1]), True) if spec.endswith("x") else (float(spec), False)
    except ValueError:
        value, fraction = 0.0, False
    if not value > 0:
        raise ValueError(f"--latency-budget {spec!r}: give milliseconds > 0 (e.g. 0.05) or a fraction of the "
                         "int8 model's latency (e.g. 0.8x)")
    return value, fraction


def latency_limit(spec: str, table: dict[str, dict[int, float]], layers: list[str]) -> float | None:
    """The budget in ms on ``table``: a fraction is taken of the int8 plan's summed table latency."""
    parsed = parse_latency_budget(spec)
    if parsed is None:
        return None
    value, fraction = parsed
    return value * sum(table[n][8] for n in layers) if fraction else value
