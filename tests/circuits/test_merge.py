"""Compositional merge on hand-built circuits, and the edges table <-> score/circuit matrices round trip."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from ftcircuits.circuits.compare import circuit_edges, circuit_nodes
from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.io import circuit_mask, edges_table
from ftcircuits.circuits.merge import merge_circuits

# A: nodes {input, a0.h0, m0, logits}; B adds a0.h1. Backgrounds (scores outside the circuit) differ.
A = {("input", "a0.h0<q>"): 1.0, ("a0.h0", "m0"): 2.0, ("m0", "logits"): 3.0}
B = {("a0.h0", "m0"): 4.0, ("m0", "logits"): -3.0, ("a0.h1", "logits"): 5.0, ("input", "a0.h1<q>"): 0.25}
A_BACKGROUND, B_BACKGROUND = 2.0, 4.0


@pytest.fixture()
def graph(hand_built_circuit):
    return hand_built_circuit.graph


@pytest.fixture()
def pair(hand_built_circuit) -> list[pl.DataFrame]:
    """A and B as full edges tables over the hand-built graph, each with its own background."""
    return [hand_built_circuit(A, A_BACKGROUND), hand_built_circuit(B, B_BACKGROUND)]


def scores_of(table: pl.DataFrame) -> dict[tuple[str, str], float]:
    return {(s, d): v for s, d, v in table.select("source", "destination", "score").iter_rows()}


@pytest.mark.parametrize(
    "rule,expected",
    [
        # (input, a0.h0<q>) is only in A: its score is A's 1.0, not averaged with B's background 4.0
        ("mean", {("a0.h0", "m0"): 3.0, ("m0", "logits"): 0.0, ("input", "a0.h0<q>"): 1.0}),
        ("max", {("a0.h0", "m0"): 4.0, ("m0", "logits"): 3.0, ("input", "a0.h0<q>"): 1.0}),
        ("min", {("a0.h0", "m0"): 2.0, ("m0", "logits"): -3.0, ("input", "a0.h0<q>"): 1.0}),
    ],
)
def test_candidate_scores_combine_only_the_circuits_that_hold_the_edge(pair, graph, rule, expected):
    merged = merge_circuits(pair, edges=100, score=rule)
    scores = scores_of(merged)
    for edge, value in {**expected, ("a0.h1", "logits"): 5.0, ("input", "a0.h1<q>"): 0.25}.items():
        assert scores[edge] == pytest.approx(value)
    # a non-candidate edge takes the mean over all circuits
    assert scores[("a1.h0", "logits")] == pytest.approx((A_BACKGROUND + B_BACKGROUND) / 2)
    assert circuit_edges(merged) == set(A) | set(B)
    assert merged.columns == ["source", "destination", "score", "in_circuit"]
    assert merged.schema["score"] == pl.Float32
    assert merged.height == graph.n_edges


def test_intersection_drops_edges_touching_nodes_outside_it(pair):
    merged = merge_circuits(pair, edges=100, nodes="intersection")
    assert circuit_edges(merged) == set(A)  # a0.h1 is only in B
    assert circuit_nodes(merged) == {"input", "a0.h0", "m0", "logits"}
    # the edges into / out of a0.h1 are no longer candidates: all-circuit mean (A background, B score)
    scores = scores_of(merged)
    assert scores[("a0.h1", "logits")] == pytest.approx((A_BACKGROUND + 5.0) / 2)
    assert scores[("input", "a0.h1<q>")] == pytest.approx((A_BACKGROUND + 0.25) / 2)


def test_union_keeps_every_circuit_edge_and_node(pair):
    merged = merge_circuits(pair, edges=100)
    assert circuit_nodes(merged) == {"input", "a0.h0", "a0.h1", "m0", "logits"}
    assert int(merged["in_circuit"].sum()) == 5  # fewer candidates than the target


@pytest.mark.parametrize(
    "rule,target,kept",
    [
        # |mean|: (a0.h1, logits) 5, (a0.h0, m0) 3, (input, a0.h0<q>) 1, (input, a0.h1<q>) .25, (m0, logits) 0
        ("mean", 1, {("a0.h1", "logits")}),
        ("mean", 3, {("a0.h1", "logits"), ("a0.h0", "m0"), ("input", "a0.h0<q>")}),
        ("mean", 4, {("a0.h1", "logits"), ("a0.h0", "m0"), ("input", "a0.h0<q>"), ("input", "a0.h1<q>")}),
        # |max|: 5, (a0.h0, m0) 4, (m0, logits) 3, ...
        ("max", 3, {("a0.h1", "logits"), ("a0.h0", "m0"), ("m0", "logits")}),
        # |min|: 5, (m0, logits) |-3|, (a0.h0, m0) 2, ...: a negative score ranks by its magnitude
        ("min", 2, {("a0.h1", "logits"), ("m0", "logits")}),
    ],
)
def test_top_edges_cut_by_absolute_score(pair, rule, target, kept):
    merged = merge_circuits(pair, edges=target, score=rule)
    assert circuit_edges(merged) == kept


def test_isolated_nodes_drop_out_with_their_edges(pair):
    # with only (a0.h1, logits) kept, the input, a0.h0 and m0 nodes vanish from the merged circuit
    merged = merge_circuits(pair, edges=1)
    assert circuit_nodes(merged) == {"a0.h1", "logits"}


def test_row_order_does_not_matter_and_one_circuit_merges_to_itself(pair):
    a, b = pair
    shuffled = merge_circuits([a, b.sample(fraction=1.0, shuffle=True, seed=1)], edges=3)
    assert shuffled.equals(merge_circuits([a, b], edges=3))
    alone = merge_circuits([a], edges=len(A))
    assert alone.equals(a)


def test_bad_input_rejected(pair):
    a, b = pair
    with pytest.raises(ValueError, match="at least one"):
        merge_circuits([], edges=3)
    with pytest.raises(ValueError, match="edges"):
        merge_circuits([a, b], edges=0)
    with pytest.raises(ValueError, match="circuit 1 does not match"):
        merge_circuits([a, b.head(b.height - 1)], edges=3)
    with pytest.raises(ValueError, match="union, intersection"):
        merge_circuits([a, b], edges=3, nodes="all")
    with pytest.raises(ValueError, match="mean, max, min"):
        merge_circuits([a, b], edges=3, score="median")


def test_circuit_mask_round_trips_edges_table(graph):
    generator = torch.Generator().manual_seed(0)
    mask = graph.edge_mask
    scores = torch.randn(mask.shape, generator=generator) * mask
    chosen = (torch.rand(mask.shape, generator=generator) < 0.3) & mask
    table = edges_table(scores, chosen, graph)
    for candidate in (table, table.sample(fraction=1.0, shuffle=True, seed=2)):
        got_scores, got_circuit = circuit_mask(candidate, graph)
        assert got_scores.dtype == torch.float32 and got_circuit.dtype == torch.bool
        assert torch.equal(got_scores, scores) and torch.equal(got_circuit, chosen)
    assert edges_table(got_scores, got_circuit, graph).equals(table)


def test_circuit_mask_rejects_a_table_of_another_graph(graph, hand_built_circuit):
    table = hand_built_circuit(A)
    other = Graph(layers=2, heads=2, kv_heads=2, parallel_blocks=True)  # MLPs do not read their own heads
    with pytest.raises(ValueError, match="graph"):
        circuit_mask(table, other)
    renamed = table.with_columns(pl.col("source").replace("m1", "m9"))
    with pytest.raises(ValueError, match="does not belong"):
        circuit_mask(renamed, graph)
