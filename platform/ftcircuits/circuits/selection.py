"""Choosing a circuit from edge scores: the top edges, greedy growth, dead-node pruning, the node view.

A circuit is a boolean ``[n_sources, n_destinations]`` mask over the graph's
edges (a subset of ``graph.edge_mask_on(device)``). Its size is given as a
``budget`` (a share of the graph's edges) or as ``edges`` (a count). Every
function here works on the device of the scores or circuit it is given and
returns its masks there.
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
    """Return the mask of the ``edges`` edges with the largest |score|, on the scores' device."""
    mask = graph.edge_mask_on(scores.device)
    magnitude = scores.abs().float().masked_fill(~mask, -1.0)
    chosen = torch.zeros(mask.numel(), dtype=torch.bool, device=scores.device)
    chosen[magnitude.flatten().topk(edges).indices] = True
    return chosen.view_as(mask)


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

    def owner_sources(self, device: torch.device | str) -> torch.Tensor:
        """Return ``source_of_destination`` as an index tensor ``[n_destinations]`` on ``device``
        (-1 for ``logits``)."""
        owners = [-1 if s is None else s for s in self.source_of_destination]
        return torch.tensor(owners, dtype=torch.long, device=device)


def greedy_edges(scores: torch.Tensor, graph: Graph, edges: int) -> torch.Tensor:
    """Grow a circuit from ``logits`` backwards: repeatedly add the highest-|score| edge whose
    destination's node is already in the circuit, until ``edges`` edges.

    The growth is a walk over a Python heap, so it reads the magnitudes into host memory once;
    the mask it returns is on the scores' device.
    """
    nodes = NodeIndex(graph)
    magnitude = scores.abs().float().cpu()
    mask = graph.edge_mask_on(magnitude.device)
    chosen: set[tuple[int, int]] = set()
    frontier: list[tuple[float, int, int]] = []
    reached_sources: set[int] = set()

    def open_destination(d: int) -> None:
        sources = mask[:, d].nonzero().flatten()
        for s, value in zip(sources.tolist(), magnitude[sources, d].tolist(), strict=True):
            heapq.heappush(frontier, (-value, s, d))

    open_destination(graph.logits_destination)
    while frontier and len(chosen) < edges:
        _, s, d = heapq.heappop(frontier)
        if (s, d) in chosen:
            continue
        chosen.add((s, d))
        if s not in reached_sources:
            reached_sources.add(s)
            for d_in in nodes.destinations_of_source[s]:
                open_destination(d_in)
    return _mask_of(chosen, graph, scores.device)


def _mask_of(edges: set[tuple[int, int]], graph: Graph, device: torch.device) -> torch.Tensor:
    """Return the ``[n_sources, n_destinations]`` mask of ``(source, destination)`` pairs on ``device``."""
    circuit = torch.zeros(graph.n_sources, graph.n_destinations, dtype=torch.bool, device=device)
    if edges:
        sources, destinations = zip(*edges, strict=True)
        circuit[torch.tensor(sources, device=device), torch.tensor(destinations, device=device)] = True
    return circuit


def prune_dead_nodes(circuit: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Drop edges of nodes that cannot matter, repeating until nothing changes; on the circuit's device.

    An edge is dead when its source node (other than ``input``) has no incoming
    edge, or its destination node (other than ``logits``) has no outgoing edge.
    """
    owner = NodeIndex(graph).owner_sources(circuit.device)  # per destination; -1: logits
    owned = owner >= 0
    node_inputs = owned.nonzero().flatten()  # the destinations that belong to a source's node
    their_sources = owner[node_inputs]
    while True:
        source_alive = _sources_with_input(circuit, node_inputs, their_sources)
        source_alive[0] = True  # input
        destination_alive = ~owned | circuit.any(dim=1)[owner.clamp(min=0)]
        pruned = circuit & source_alive[:, None] & destination_alive[None, :]
        if torch.equal(pruned, circuit):
            return pruned
        circuit = pruned


def _sources_with_input(
    circuit: torch.Tensor, destinations: torch.Tensor, owners: torch.Tensor
) -> torch.Tensor:
    """Return per source whether one of its node's ``destinations`` (``owners``: their sources) has an
    incoming circuit edge."""
    incoming = circuit.any(dim=0)[destinations].long()
    counts = torch.zeros(circuit.shape[0], dtype=torch.long, device=circuit.device)
    return counts.index_add_(0, owners, incoming) > 0


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
    """Return a circuit mask on the scores' device: the top or greedily grown edges at a budget or count,
    then dead-node pruning."""
    check_choice(SelectionMethod, method, "selection method")
    count = edge_count(graph, budget, edges)
    circuit = top_edges(scores, graph, count) if method == "top" else greedy_edges(scores, graph, count)
    return prune_dead_nodes(circuit, graph) if prune else circuit
