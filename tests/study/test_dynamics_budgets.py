"""The headline at several budgets (circuits re-selected from their stored scores) and faithfulness
against budget at every checkpoint, with the smallest faithful budget."""

from __future__ import annotations

import polars as pl
import pytest

from ftcircuits.study.dynamics import similarity_by_budget, smallest_faithful_budget

BEFORE = {("input", "logits"): 10.0, ("input", "m0"): 5.0, ("m0", "logits"): 4.0}
AFTER = {("input", "logits"): 10.0, ("input", "a1.h0<q>"): -5.0, ("a1.h0", "logits"): 4.0}


def test_jaccard_at_each_budget_reselects_from_the_scores(hand_built_circuit):
    graph = hand_built_circuit.graph
    one, three = 1 / graph.n_edges, 3 / graph.n_edges
    before, after = hand_built_circuit(BEFORE), hand_built_circuit(AFTER)
    table = similarity_by_budget(before, after, graph, [one, three])
    assert table["edges"].to_list() == [1, 3]
    # one edge: input -> logits in both; three: the edge shared, two each of their own (nodes: input,
    # logits shared, m0 vs a1.h0 not)
    assert table["edge_jaccard"].to_list() == pytest.approx([1.0, 1 / 5])
    assert table["node_jaccard"].to_list() == pytest.approx([1.0, 2 / 4])


def test_smallest_faithful_budget_per_step():
    curves = pl.DataFrame({
        "step": [0, 0, 0, 100, 100, 100],
        "budget": [0.01, 0.05, 0.1] * 2,
        "faithfulness": [0.5, 0.85, 0.95, 0.2, 0.3, 0.79],
    })  # fmt: skip
    table = smallest_faithful_budget(curves)
    assert table.rows() == [(0, 0.05), (100, None)]
    assert smallest_faithful_budget(curves, 0.25).rows() == [(0, 0.01), (100, 0.05)]
