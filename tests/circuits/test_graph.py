"""The graph's edges honour parallel vs sequential blocks and match the reference counts."""

from __future__ import annotations

import pytest

from ftcircuits.circuits.graph import Graph
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.shapes import shape_config


@pytest.mark.parametrize("shape,edges", [("gpt2", 32_491), ("pythia-1.4b-deduped", 231_493)])
def test_edge_counts_equal_the_reference_figures(shape, edges):
    graph = Graph.of(describe_architecture(shape_config(shape)))
    assert graph.n_edges == edges


def test_parallel_mlp_does_not_read_its_own_heads_but_sequential_does():
    for parallel in (True, False):
        graph = Graph(layers=2, heads=3, kv_heads=3, parallel_blocks=parallel)
        mlp = graph.mlp_destination(1)
        own_head = graph.head_source(1, 0)
        assert bool(graph.edge_mask[own_head, mlp]) is (not parallel)
        assert graph.edge_mask[graph.mlp_source(0), mlp]
        assert not graph.edge_mask[graph.mlp_source(1), mlp]
        assert not graph.edge_mask[own_head, graph.attention_destinations(1)].any()


def test_names_and_node_view():
    graph = Graph(layers=1, heads=2, kv_heads=1, parallel_blocks=False)
    assert graph.source_names == ["input", "a0.h0", "a0.h1", "m0"]
    assert graph.destination_names == ["a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h0<v>", "m0", "logits"]
    assert graph.destination_node(3) == "a0.h0"
    # input -> q0, q1, k0, v0, m0, logits; each head -> m0 and logits; m0 -> logits
    assert graph.n_edges == 6 + 2 * 2 + 1


def test_tiny_default_has_a_few_thousand_edges():
    graph = Graph(layers=6, heads=8, kv_heads=8, parallel_blocks=True)
    assert 3000 <= graph.n_edges <= 5000
