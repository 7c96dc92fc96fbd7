"""The graph's edges honour parallel vs sequential blocks and match the reference counts."""

from __future__ import annotations

import pytest

from ftcircuits.circuits.graph import Graph
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.shapes import shape_config
from ftcircuits.models.tiny import tiny_config


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


def edge_count(layers: int, heads: int, kv_heads: int, parallel: bool) -> int:
    """Edges by the formula: every destination reads every source before it in the residual stream.

    Layer i's q (one per head), k and v (one per KV head) read the input and the heads and MLPs of
    layers < i; its MLP reads the same, plus layer i's own heads when blocks are sequential; the
    logits read every source.
    """
    before = [1 + i * (heads + 1) for i in range(layers)]  # sources before layer i
    attention = sum((heads + 2 * kv_heads) * n for n in before)
    mlp = sum(n + (0 if parallel else heads) for n in before)
    return attention + mlp + 1 + layers * (heads + 1)


@pytest.mark.parametrize(
    "layers,heads,kv_heads,parallel",
    [(6, 8, 8, True), (6, 8, 8, False), (2, 4, 2, False), (1, 2, 1, False), (12, 12, 12, False)],
)
def test_edge_count_follows_the_formula(layers, heads, kv_heads, parallel):
    graph = Graph(layers=layers, heads=heads, kv_heads=kv_heads, parallel_blocks=parallel)
    assert graph.n_edges == edge_count(layers, heads, kv_heads, parallel)
    assert int(graph.edge_mask.sum()) == graph.n_edges


def test_tiny_default_has_3580_edges(tokenizer):
    graph = Graph.of(describe_architecture(tiny_config(tokenizer)))  # the shipped base model's shape
    assert (graph.layers, graph.heads, graph.kv_heads, graph.parallel_blocks) == (6, 8, 8, True)
    # 6 layers x (8 q + 8 k + 8 v + 1 MLP) destinations reading 1 + 9i sources each, + 55 into the logits
    assert graph.n_edges == edge_count(6, 8, 8, parallel=True) == 25 * (6 + 9 * 15) + 55 == 3580
