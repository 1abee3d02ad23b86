"""Per output-channel-group bit widths: the search's view of a layer as several independent items.

Why a graph view: every cost table (MSE, Hessian trace, one-layer sensitivity, LAAQ's injected error
times the local tail gain) and the knapsack are written per *layer*. Splitting a layer's output
channels into groups of ``group_size`` as separate float layers followed by a channel concatenation
computes exactly the same function, and makes each group a "layer" of its own to every cost table,
to the solver, to random plans and to refinement — no method needs to know about groups. The groups'
choices are then folded back into one grouped :class:`~laaq.quant.plan.LayerSetting` per real layer,
which the quantizer, the twin, the integer reference and the TVM lowering execute bit-exactly (the
weights are per-channel quantized anyway; a group only changes its channels' ``qmax`` and clip).

Only plain layers are split: convolutions with ``groups == 1`` and no fused residual, and dense
layers — never the last layer (its accumulator is the logits). A layer with fewer than two full groups
stays whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from laaq.graph import Graph, Node
from laaq.quant.plan import LayerSetting

SEP = "/g"  # unit names: "<layer>/g<k>"


@dataclass(frozen=True)
class GroupView:
    """The split float graph and, per real layer, its units ``(unit name, channels)`` in channel order."""

    graph: Graph
    units: dict[str, list[tuple[str, int]]]

    def to_layers(self, alloc: Mapping[str, LayerSetting]) -> dict[str, LayerSetting]:
        """Fold a per-unit allocation back into one (possibly grouped) setting per real layer."""
        return {layer: LayerSetting.grouped([(ch, alloc[u]) for u, ch in parts]) for layer, parts in self.units.items()}

    @property
    def split_layers(self) -> list[str]:
        return [n for n, parts in self.units.items() if len(parts) > 1]


def splittable(graph: Graph, node: Node, group_size: int) -> bool:
    return (node.has_weight and node is not graph.nodes[-1] and node.residual is None and node.groups == 1
            and node.weight.shape[0] >= 2 * group_size)


def group_view(graph: Graph, group_size: int) -> GroupView:
    """Split every splittable layer into output-channel groups of ``group_size`` (the last may be larger)."""
    if group_size < 1:
        raise ValueError(f"group size must be at least 1 channel, got {group_size}")
    nodes: list[Node] = []
    units: dict[str, list[tuple[str, int]]] = {}
    for n in graph.nodes:
        if not n.has_weight:
            nodes.append(n)
            continue
        if not splittable(graph, n, group_size):
            nodes.append(n)
            units[n.name] = [(n.name, int(n.weight.shape[0]))]
            continue
        out = int(n.weight.shape[0])
        k = out // group_size
        bounds = [i * group_size for i in range(k)] + [out]  # remainder joins the last group
        parts = []
        for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            name = f"{n.name}{SEP}{g}"
            nodes.append(replace(n, name=name, weight=n.weight[a:b].copy(), bias=n.bias[a:b].copy()))
            parts.append((name, b - a))
        # the concatenation takes the real layer's name, so every later node still reads it unchanged
        nodes.append(Node(n.name, "cat", [u for u, _ in parts], relu=n.relu))
        units[n.name] = parts
    return GroupView(Graph(nodes, graph.input_shape, graph.num_classes), units)
