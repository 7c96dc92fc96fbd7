"""Selection on hand-built scores: the top edges, greedy, pruning to a fixed point, node view."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.selection import (
    edge_count,
    greedy_edges,
    nodes_in_circuit,
    prune_dead_nodes,
    select_circuit,
    top_edges,
)

GRAPH = Graph(layers=2, heads=2, kv_heads=2, parallel_blocks=False)


def edge(source: str, destination: str) -> tuple[int, int]:
    return GRAPH.source_names.index(source), GRAPH.destination_names.index(destination)


def mask_of(*edges: tuple[str, str]) -> torch.Tensor:
    mask = torch.zeros_like(GRAPH.edge_mask)
    for s, d in edges:
        mask[edge(s, d)] = True
    return mask


def test_top_edges_takes_largest_magnitudes_among_real_edges():
    scores = torch.zeros(GRAPH.n_sources, GRAPH.n_destinations)
    scores[edge("a0.h1", "m1")] = -5.0
    scores[edge("input", "a0.h0<q>")] = 3.0
    scores[edge("m1", "a0.h0<q>")] = 100.0  # not an edge (m1 is after layer 0): never chosen
    chosen = top_edges(scores, GRAPH, 2)
    assert torch.equal(chosen, mask_of(("a0.h1", "m1"), ("input", "a0.h0<q>")))


def test_pruning_removes_dead_chains_until_nothing_changes():
    circuit = mask_of(
        ("input", "a0.h0<q>"), ("a0.h0", "m1"), ("m1", "logits"),  # live chain input -> a0.h0 -> m1 -> logits
        ("input", "a0.h1<k>"), ("a0.h1", "a1.h0<v>"),  # a1.h0 writes nowhere: a1.h0 dead, then a0.h1
        ("a1.h1", "logits"),  # a1.h1 reads nothing: dead
    )  # fmt: skip
    pruned = prune_dead_nodes(circuit, GRAPH)
    assert torch.equal(pruned, mask_of(("input", "a0.h0<q>"), ("a0.h0", "m1"), ("m1", "logits")))
    assert torch.equal(prune_dead_nodes(pruned, GRAPH), pruned)


def test_greedy_grows_backwards_from_logits():
    scores = torch.zeros(GRAPH.n_sources, GRAPH.n_destinations)
    scores[edge("m1", "logits")] = 1.0
    scores[edge("a0.h0", "m1")] = 0.9
    scores[edge("input", "a0.h1<q>")] = 50.0  # big, but a0.h1 is not reached: not taken first
    scores[edge("input", "a0.h0<v>")] = 0.5
    chosen = greedy_edges(scores, GRAPH, 3)
    assert torch.equal(chosen, mask_of(("m1", "logits"), ("a0.h0", "m1"), ("input", "a0.h0<v>")))


def test_node_view_collapses_qkv_into_heads():
    circuit = mask_of(("input", "a0.h0<q>"), ("input", "a0.h0<k>"), ("a0.h0", "logits"))
    assert nodes_in_circuit(circuit, GRAPH) == {"input", "a0.h0", "logits"}


def test_budgets_and_bad_input():
    assert edge_count(GRAPH, budget=0.5) == round(0.5 * GRAPH.n_edges)
    with pytest.raises(ValueError, match="exactly one"):
        edge_count(GRAPH)
    with pytest.raises(ValueError, match="edge count"):
        edge_count(GRAPH, edges=GRAPH.n_edges + 1)
    with pytest.raises(ValueError, match="selection method"):
        select_circuit(torch.zeros(GRAPH.n_sources, GRAPH.n_destinations), GRAPH, "random", edges=1)
