"""The variant catalogue: what ``--variants fp32,int8,laaq`` means, and how each becomes a Relax module.

One place for ``bench``, ``compile`` and ``search``: a variant is either a float model (``fp32``,
``fp16``) or a quantized graph from a plan (``int8``, ``int7``, ``int4``: uniform; ``laaq``: searched at the
run's budget; ``plan:NAME``: a plan file). Plan-producing variants are registered by name
(:func:`register_plan_variant`), so adding one (e.g. ``uniform-7``) is one decorated function; the
lowering a target gets is chosen once, by its profile (:func:`harness.lower.lower_integer_for`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.lower import lower_float, lower_float16, lower_integer_for
from harness.profile import TargetProfile
from harness.tuning.database import default_key
from laaq.graph import Graph
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import QuantizedGraph, calibrate, quantize_graph
from laaq.search import Budget, Calibration, SearchConfig, latency_budget, search_plan

#: float variants and the bit width of their weights and activations (size and energy proxies)
FLOAT_VARIANTS: dict[str, int] = {"fp32": 32, "fp16": 16}


@dataclass(frozen=True)
class PlanRequest:
    """What a plan-producing variant may use: the graph, the run's calibration data and budget."""

    graph: Graph
    calib: Calibration
    avg_bits: float
    seed: int
    adversarial: bool  # the model was adversarially trained (LAAQ refines on the adversarial loss only then)
    latency: dict[str, dict[int, float]] | None = None  # measured table[layer][bits] -> ms on the run's target
    latency_ms: float | None = None  # LAAQ's latency budget on that table (None: no latency constraint)


PlanMaker = Callable[[PlanRequest], QuantPlan]
PLAN_VARIANTS: dict[str, PlanMaker] = {}


def register_plan_variant(name: str) -> Callable[[PlanMaker], PlanMaker]:
    def deco(fn: PlanMaker) -> PlanMaker:
        PLAN_VARIANTS[name] = fn
        return fn

    return deco


def builtin_variants() -> tuple[str, ...]:
    return (*FLOAT_VARIANTS, *PLAN_VARIANTS)


def searched_plan(method: str, graph: Graph, calib: Calibration, budget: Budget, seed: int, adversarial: bool,
                  refine: bool | None = None, group_size: int = 0) -> QuantPlan:
    """A plan from a search method (LAAQ or a baseline) — the one call behind ``bench``'s ``laaq`` and ``search``.

    ``refine`` (LAAQ's layer-wise refinement on the adversarial loss) defaults to on for an adversarially
    trained model only: a plain model has no adversarial signal to refine on, and refining on it harms.
    """
    cfg = SearchConfig(seed=seed, refine=adversarial if refine is None else refine, group_size=group_size)
    return search_plan(method, graph, calib, budget, cfg)


def _uniform(bits: int) -> Callable[[PlanRequest], QuantPlan]:
    def make(req: PlanRequest) -> QuantPlan:
        return QuantPlan.uniform([n.name for n in req.graph.weighted()], bits, name=f"uniform-w{bits}")

    return make


register_plan_variant("int8")(_uniform(8))
register_plan_variant("int7")(_uniform(7))  # ≤ 7 bits: the exact vpmaddubsw path on AVX2 (harness.backend.schemes)
register_plan_variant("int4")(_uniform(4))


@register_plan_variant("laaq")
def laaq_plan(req: PlanRequest) -> QuantPlan:
    """The LAAQ plan at the run's average-bit budget, on the run's adversarial calibration data."""
    budget = (Budget(avg_bits=req.avg_bits) if req.latency_ms is None or req.latency is None
              else latency_budget(req.latency, req.latency_ms, avg_bits=req.avg_bits))
    return searched_plan("laaq", req.graph, req.calib, budget, req.seed, req.adversarial)


@dataclass
class Variant:
    """A model to compile: either the float model or a quantized graph (with its plan)."""

    name: str
    kind: str  # "float" | "int"
    plan: QuantPlan | None = None
    qg: QuantizedGraph | None = None
    float_graph: Graph | None = None  # a float variant's layer graph (sizes, energy proxy, layers.csv)
    build_s: float = 0.0  # wall seconds its plan took to make (search) and quantize (the run's stage table)

    @property
    def float_bits(self) -> int:
        """Bit width of a float variant's weights and activations (32 for fp32, 16 for fp16)."""
        return FLOAT_VARIANTS.get(self.name, 32)

    def weight_bits(self, graph: Graph) -> dict[str, int]:
        """Weight bits per weighted layer: the plan's for integer variants, the float width otherwise."""
        return {n.name: (self.plan.setting(n.name).bits if self.plan else self.float_bits) for n in graph.weighted()}

    def graph(self, model: torch.nn.Module) -> Graph:
        if self.qg is not None:
            return self.qg.graph
        if self.float_graph is None:
            raise ValueError(f"variant {self.name!r} was built without its layer graph")
        return self.float_graph

    def lower(self, model: torch.nn.Module, shape: tuple[int, ...], batch: int, profile: TargetProfile):
        """The Relax module of this variant at one batch size, in the lowering the profile's target gets."""
        if self.kind == "float":
            return (lower_float16 if self.name == "fp16" else lower_float)(model, shape, batch)
        return lower_integer_for(self.qg, batch, profile)

    def tuning_key(self, arch: str, shape: tuple[int, ...], batch: int, profile: TargetProfile) -> str:
        """Tuning-database key: integer kernels differ by lowering scheme, not by bit width."""
        return default_key(arch, shape, batch, self.name if self.kind == "float" else profile.int8_pattern)


def plan_variant_name(plan: QuantPlan) -> str:
    """The variant name of a plan file: ``plan:<its name>``."""
    return f"plan:{plan.name}"


def build_variants(names: tuple[str, ...], plan_files: tuple[str, ...], req: PlanRequest) -> list[Variant]:
    """The variants named (built-in names, then plan files), quantized with one set of activation scales.

    Raises ValueError naming the built-in variants for an unknown name.
    """
    scales = calibrate(req.graph, req.calib.all_x)  # clean + adversarial inputs, the same for every plan
    out: list[Variant] = []
    plans: list[tuple[str, QuantPlan, float]] = []
    for v in names:
        if v in FLOAT_VARIANTS:  # fp16: half-precision weights/activations, fp32 accumulation
            out.append(Variant(v, "float", float_graph=req.graph))
        elif v in PLAN_VARIANTS:
            t0 = time.perf_counter()
            plans.append((v, PLAN_VARIANTS[v](req), time.perf_counter() - t0))
        else:
            raise ValueError(f"unknown variant {v!r}; built-in variants are {builtin_variants()} "
                             "(add plans with --plan FILE)")
    for p in plan_files:
        plan = QuantPlan.from_file(p)
        plans.append((plan_variant_name(plan), plan, 0.0))
    for name, plan, plan_s in plans:
        t0 = time.perf_counter()
        qg = quantize_graph(req.graph, plan, req.calib.all_x, act_scales=scales)
        out.append(Variant(name, "int", plan, qg, build_s=plan_s + time.perf_counter() - t0))
    return out


def quantized(graph: Graph, plan: QuantPlan, calib: Calibration) -> QuantizedGraph:
    """One plan's quantized graph with the run's calibration (what ``compile --plan`` builds, as ``bench`` does)."""
    return quantize_graph(graph, plan, calib.all_x)
