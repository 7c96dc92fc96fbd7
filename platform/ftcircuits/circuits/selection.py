"""Choosing a circuit from edge scores: the top edges, greedy growth, dead-node pruning, the node view.

A circuit is a boolean ``[n_sources, n_destinations]`` mask over the graph's
edges (a subset of ``graph.edge_mask``). Its size is given as a ``budget`` (a
share of the graph's edges) or as ``edges`` (a count).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import cached_property

import torch

from ftcircuits.circuits.graph import Graph
from ftcircuits.options import SelectionMethod, check_choice


@dataclass(frozen=True)
class Selection:
    """How a circuit is chosen from edge scores (``DiscoverySettings.selection_rule()`` builds it)."""

    method: SelectionMethod = "top"
    budget: float = 0.05
    prune: bool = True

    def __post_init__(self) -> None:
        check_choice(SelectionMethod, self.method, "selection method")
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget (share of edges) must be in (0, 1], got {self.budget}")


def edge_count(graph: Graph, budget: float | None = None, edges: int | None = None) -> int:
    """Return a circuit's edge count from a budget (share of the graph's edges) or a count (exactly one)."""
    if (budget is None) == (edges is None):
        raise ValueError("give exactly one of a budget (share of edges) or an edge count")
    if budget is not None:
        if not 0 < budget <= 1:
            raise ValueError(f"budget (share of edges) must be in (0, 1], got {budget}")
        return max(1, round(budget * graph.n_edges))
    if not 0 < edges <= graph.n_edges:
        raise ValueError(f"edge count must be in [1, {graph.n_edges}], got {edges}")
    return edges


def top_edges(scores: torch.Tensor, graph: Graph, edges: int) -> torch.Tensor:
    """Return the mask of the ``edges`` edges with the largest |score|."""
    magnitude = torch.where(graph.edge_mask, scores.abs().float(), torch.tensor(-1.0))
    chosen = torch.zeros(graph.edge_mask.numel(), dtype=torch.bool)
    chosen[magnitude.flatten().topk(edges).indices] = True
    return chosen.view_as(graph.edge_mask)


class NodeIndex:
    """Which destinations and sources belong to each node (q/k/v collapse into their head)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    @cached_property
    def destinations_of_source(self) -> list[list[int]]:
        """For every source, the destinations of the same node (its inputs); none for ``input``."""
        by_node: dict[str, list[int]] = {}
        for index in range(self.graph.n_destinations):
            by_node.setdefault(self.graph.destination_node(index), []).append(index)
        return [by_node.get(name, []) for name in self.graph.source_names]

    @cached_property
    def source_of_destination(self) -> list[int | None]:
        """For every destination, the source of the same node (None for ``logits``)."""
        position = {name: i for i, name in enumerate(self.graph.source_names)}
        return [position.get(self.graph.destination_node(d)) for d in range(self.graph.n_destinations)]


def greedy_edges(scores: torch.Tensor, graph: Graph, edges: int) -> torch.Tensor:
    """Grow a circuit from ``logits`` backwards: repeatedly add the highest-|score| edge whose
    destination's node is already in the circuit, until ``edges`` edges."""
    nodes = NodeIndex(graph)
    magnitude = scores.abs().float()
    chosen = torch.zeros_like(graph.edge_mask)
    frontier: list[tuple[float, int, int]] = []
    reached_sources: set[int] = set()

    def open_destination(d: int) -> None:
        for s in graph.edge_mask[:, d].nonzero().flatten().tolist():
            heapq.heappush(frontier, (-magnitude[s, d].item(), s, d))

    open_destination(graph.logits_destination)
    added = 0
    while frontier and added < edges:
        _, s, d = heapq.heappop(frontier)
        if chosen[s, d]:
            continue
        chosen[s, d] = True
        added += 1
        if s not in reached_sources:
            reached_sources.add(s)
            for d_in in nodes.destinations_of_source[s]:
                open_destination(d_in)
    return chosen


def prune_dead_nodes(circuit: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Drop edges of nodes that cannot matter, repeating until nothing changes.

    An edge is dead when its source node (other than ``input``) has no incoming
    edge, or its destination node (other than ``logits``) has no outgoing edge.
    """
    nodes = NodeIndex(graph)
    circuit = circuit.clone()
    inputs_of = nodes.destinations_of_source
    source_of = nodes.source_of_destination
    while True:
        incoming = circuit.any(dim=0)  # per destination
        outgoing = circuit.any(dim=1)  # per source
        source_alive = torch.tensor(
            [s == 0 or bool(incoming[inputs_of[s]].any()) for s in range(graph.n_sources)]
        )
        destination_alive = torch.tensor(
            [source_of[d] is None or bool(outgoing[source_of[d]]) for d in range(graph.n_destinations)]
        )
        pruned = circuit & source_alive[:, None] & destination_alive[None, :]
        if torch.equal(pruned, circuit):
            return circuit
        circuit = pruned


def nodes_in_circuit(circuit: torch.Tensor, graph: Graph) -> set[str]:
    """Return the node names touched by any circuit edge (q/k/v collapsed into their head)."""
    sources, destinations = circuit.nonzero(as_tuple=True)
    names = {graph.source_names[s] for s in sources.tolist()}
    return names | {graph.destination_node(d) for d in destinations.tolist()}


def select_circuit(
    scores: torch.Tensor,
    graph: Graph,
    method: SelectionMethod = "top",
    budget: float | None = None,
    edges: int | None = None,
    prune: bool = True,
) -> torch.Tensor:
    """Return a circuit mask: the top or greedily grown edges at a budget or count, then dead-node pruning."""
    check_choice(SelectionMethod, method, "selection method")
    count = edge_count(graph, budget, edges)
    circuit = top_edges(scores, graph, count) if method == "top" else greedy_edges(scores, graph, count)
    return prune_dead_nodes(circuit, graph) if prune else circuit
