"""Energy *proxies* from operation and memory-traffic counts — a model, never a measurement.

Default energies are Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014, 45 nm, 0.9 V:

===================  =========  ===========================================
operation            energy     note
===================  =========  ===========================================
int8 add             0.03 pJ
int32 add            0.1 pJ     accumulator add of an integer MAC
int8 mult            0.2 pJ     scaled by (w_bits·a_bits)/64 below 8×8 bits
fp16 add / mult      0.4 / 1.1 pJ  fp16 variants (GPU)
fp32 add             0.9 pJ
fp32 mult            3.7 pJ
SRAM read (32 bit)   5 pJ       8 KB cache; 1.25 pJ/byte (activations)
DRAM read (32 bit)   640 pJ     160 pJ/byte (weights, read once per inference)
===================  =========  ===========================================

A target file's ``[energy]`` table may override any key of :data:`DEFAULT_PJ`. Measured energy
(RAPL/NVML/an external meter) is a separate, optional column filled only from a real sensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from laaq.graph import Graph

DEFAULT_PJ: dict[str, float] = {
    "int8_add": 0.03,
    "int32_add": 0.1,
    "int8_mult": 0.2,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "sram_byte": 5.0 / 4,
    "dram_byte": 640.0 / 4,
}
SOURCE = "Horowitz ISSCC 2014 (45 nm) op/byte energies; proxy model, not measured"


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    macs: int
    w_bits: int
    a_bits: int
    params: int
    weight_bytes: float  # packed at the real bit width, plus int32 bias
    act_bytes: float  # input + output activations moved per sample
    energy_pj: float

    @property
    def bops(self) -> int:
        return self.macs * self.w_bits * self.a_bits


def mac_energy_pj(w_bits: int, a_bits: int, table: dict[str, float]) -> float:
    if w_bits >= 32:
        return table["fp32_mult"] + table["fp32_add"]
    if w_bits == 16:
        return table["fp16_mult"] + table["fp16_add"]
    return table["int8_mult"] * (w_bits * a_bits) / 64.0 + table["int32_add"]


def layer_costs(graph: Graph, bits: dict[str, int], a_bits: int, overrides: dict[str, float] | None = None
                ) -> list[LayerCost]:
    """Per weighted layer, per sample. ``bits`` maps layer → weight bits (32 / 16 for float variants)."""
    table = {**DEFAULT_PJ, **(overrides or {})}
    out = []
    for n in graph.weighted():
        wb = bits[n.name]
        ab = wb if wb >= 16 else a_bits  # float variants move float activations
        params = int(n.weight.size)
        w_bytes = params * wb / 8 + n.weight.shape[0] * 4
        in_elems = 1
        for d in graph.input_shape_of(n):
            in_elems *= d
        out_elems = 1
        for d in graph.shapes[n.name]:
            out_elems *= d
        a_bytes = (in_elems + out_elems) * ab / 8
        macs = graph.macs(n)
        e = macs * mac_energy_pj(wb, ab, table) + w_bytes * table["dram_byte"] + a_bytes * table["sram_byte"]
        out.append(LayerCost(n.name, n.op, macs, wb, ab, params, w_bytes, a_bytes, e))
    return out


def model_totals(costs: list[LayerCost]) -> dict[str, float]:
    return {
        "macs": sum(c.macs for c in costs),
        "bops": sum(c.bops for c in costs),
        "weight_bytes": sum(c.weight_bytes for c in costs),
        "act_bytes": sum(c.act_bytes for c in costs),
        "energy_proxy_uj": sum(c.energy_pj for c in costs) / 1e6,
    }
