"""Per-layer latency tables: measured per (layer, scheme) on the device, cached, and fed to the search."""

from __future__ import annotations

from harness.devices import open_device
from harness.layer_latency import LayerTime, as_constraint_table, consistency, layer_table, plan_latency
from harness.profile import resolve
from laaq.quant.plan import QuantPlan
from laaq.search import latency_budget, search_plan


def test_table_measured_per_scheme_and_cached(tiny_model, private_cache) -> None:
    graph = tiny_model.to_graph()
    x86 = resolve("x86-avx2")  # the portable AVX2 code: widths change kernels there (VNNI: one kernel for all)
    with open_device(x86, progress=False) as session:
        first = layer_table(graph, x86, session, (4, 7, 8))
        again = layer_table(graph, x86, session, (4, 7, 8))
    names = [n.name for n in graph.weighted()]
    assert [(t.layer, t.bits) for t in first] == [(n, b) for n in names for b in (4, 7, 8)]
    by = {(t.layer, t.bits): t for t in first}
    for n in names:  # 4 and 7 bits share the vpmaddubsw kernel (one timing), 8 bits is the vpmaddwd one
        assert by[(n, 4)].scheme == by[(n, 7)].scheme == "nchwc_avx2_u8" and by[(n, 8)].scheme == "nchwc_avx2"
        assert by[(n, 4)].median_ms == by[(n, 7)].median_ms > 0 and by[(n, 8)].median_ms > 0
    assert all(t.measured_as == "native" for t in first)
    assert all(t.cached for t in again) and [t.median_ms for t in again] == [t.median_ms for t in first]
    assert list((private_cache / "latency" / "x86-avx2").glob("*.json"))
    plan = QuantPlan.uniform(names, 7)
    assert plan_latency(first, plan) == sum(by[(n, 7)].median_ms for n in names)
    assert consistency(first, plan, 2 * plan_latency(first, plan)) == 0.5


def test_two_targets_two_tables_two_plans(tiny_model) -> None:
    """The latency-aware search: the same model and budget, two boards' tables, two different plans."""
    graph = tiny_model.to_graph()
    names = [n.name for n in graph.weighted()]
    bits = (2, 3, 4, 5, 6, 7, 8)
    # board A: narrow weights are fast only in the first layer; board B: only in the last
    a = {n: {b: (1.0 if (b <= 7 and i == 0) else 3.0) for b in bits} for i, n in enumerate(names)}
    b_ = {n: {b: (1.0 if (b <= 7 and i == len(names) - 1) else 3.0) for b in bits} for i, n in enumerate(names)}
    limit = 3.0 * len(names) - 2.0  # only one layer can leave 8 bits... and it must be the fast one
    plans = {}
    for board, table in (("A", a), ("B", b_)):
        plans[board] = search_plan("mse", graph, None, latency_budget(table, limit, avg_bits=8.0))
    assert plans["A"].setting(names[0]).bits <= 7 and plans["B"].setting(names[-1]).bits <= 7
    assert plans["A"].layers != plans["B"].layers
    rows = [LayerTime("l", "conv", b, "s", 1, ms, ms, "native") for b, ms in ((7, 0.5), (8, 0.9))]
    assert as_constraint_table(rows) == {"l": {7: 0.5, 8: 0.9}}
