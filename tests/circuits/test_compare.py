"""Circuit comparison on hand-built circuits: overlap, Spearman, Algorithm 1 deltas, layers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ftcircuits.circuits.compare import (
    circuit_edges,
    circuit_nodes,
    circuit_similarity,
    critical_layers,
    edge_changes,
    jaccard,
    layer_scores,
    node_layer,
)

# before: input -> a0.h0 (q) -> m0 -> logits
BEFORE = {("input", "a0.h0<q>"): 0.5, ("a0.h0", "m0"): 2.0, ("m0", "logits"): -1.0}
# after: the q edge becomes a k edge, two edges stay (new scores), a0.h1 -> m1 joins
AFTER = {("input", "a0.h0<k>"): -0.25, ("a0.h0", "m0"): 1.5, ("m0", "logits"): 1.0, ("a0.h1", "m1"): 3.0}


@pytest.fixture()
def circuit(hand_built_circuit):
    """Full edges tables over the hand-built graph (``background=None``: distinct scores elsewhere)."""
    return hand_built_circuit


def test_node_layer():
    assert node_layer("input") == 0
    assert node_layer("input", input_layer=-1) == -1
    assert node_layer("a3.h5") == 3
    assert node_layer("a3.h5<q>") == 3
    assert node_layer("a12.h0<v>") == 12
    assert node_layer("m2") == 2
    assert node_layer("logits") is None
    with pytest.raises(ValueError, match="not a node name"):
        node_layer("x7")


def test_nodes_collapse_qkv_and_include_input_and_logits(circuit):
    before = circuit(BEFORE)
    assert circuit_nodes(before) == {"input", "a0.h0", "m0", "logits"}
    assert circuit_edges(before) == set(BEFORE)
    assert circuit_nodes(circuit({("input", "a1.h1<v>"): 1.0})) == {"input", "a1.h1"}


def test_jaccard():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 1.0
    assert jaccard({1}, set()) == 0.0


def test_similarity_counts_and_jaccards(circuit):
    sim = circuit_similarity(circuit(BEFORE), circuit(AFTER))
    # nodes {input, a0.h0, m0, logits} vs those plus {a0.h1, m1}; edges share 2 of 5
    assert sim["node_jaccard"] == pytest.approx(4 / 6)
    assert sim["edge_jaccard"] == pytest.approx(2 / 5)
    assert (sim["edges_added"], sim["edges_removed"]) == (2, 1)
    assert (sim["nodes_before"], sim["nodes_after"]) == (4, 6)
    assert (sim["edges_before"], sim["edges_after"]) == (3, 4)


def test_spearman_identical_and_reversed(circuit):
    before = circuit(BEFORE, background=None)
    assert circuit_similarity(before, before)["score_spearman"] == pytest.approx(1.0)
    reversed_ = before.with_columns(-pl.col("score")).sample(fraction=1.0, shuffle=True, seed=0)
    assert circuit_similarity(before, reversed_)["score_spearman"] == pytest.approx(-1.0)
    # negated scores keep every |score|: the ranking that selection uses is unchanged
    assert circuit_similarity(before, reversed_)["abs_score_spearman"] == pytest.approx(1.0)


def test_mismatched_tables_rejected(circuit):
    before = circuit(BEFORE)
    with pytest.raises(ValueError, match="different edges"):
        circuit_similarity(before, before.head(before.height - 1))
    renamed = before.with_columns(pl.col("source").replace("input", "embed"))
    with pytest.raises(ValueError, match="different edges"):
        edge_changes(before, renamed)
    with pytest.raises(ValueError, match="duplicate"):
        edge_changes(before, pl.concat([before.head(1), before.head(before.height - 1)]))


def test_edge_changes_deltas_follow_algorithm_1(circuit):
    # after scores the removed q edge at 10 outside its circuit: a removed edge still counts |s_before|
    after = circuit(AFTER).with_columns(
        score=pl.when(pl.col("destination") == "a0.h0<q>").then(10.0).otherwise(pl.col("score"))
    )
    changes = edge_changes(circuit(BEFORE), after).sort(["source", "destination"])
    assert changes.columns == ["source", "destination", "status", "delta"]
    got = {(r["source"], r["destination"]): (r["status"], r["delta"]) for r in changes.iter_rows(named=True)}
    assert got == {
        ("input", "a0.h0<q>"): ("removed", 0.5),
        ("input", "a0.h0<k>"): ("added", 0.25),
        ("a0.h0", "m0"): ("kept", 0.5),
        ("m0", "logits"): ("kept", 2.0),
        ("a0.h1", "m1"): ("added", 3.0),
    }


CHANGES = pl.DataFrame(
    {
        "source": ["input", "a0.h0", "a1.h1", "m0"],
        "destination": ["a1.h0<q>", "m1", "logits", "a1.h1<v>"],
        "delta": [4.0, 1.0, 2.0, 0.5],
    }
)


@pytest.mark.parametrize(
    "variant,expected",
    [
        ("source", [5.5, 2.0]),  # input (4) counts as layer 0: layer 0 leads
        ("source_no_input", [1.5, 2.0]),  # without it layer 1 leads
        ("destination", [0.0, 5.5]),  # all destinations in layer 1; the logits edge (2) is left out
    ],
)
def test_layer_score_variants(variant, expected):
    scores = layer_scores(CHANGES, layers=2, variant=variant)
    assert scores.columns == ["layer", "score"]
    assert scores["layer"].to_list() == [0, 1]
    assert scores["score"].to_list() == pytest.approx(expected)


def test_layer_scores_fill_empty_layers_and_reject_bad_input():
    scores = layer_scores(CHANGES, layers=4)
    assert scores["layer"].to_list() == [0, 1, 2, 3]
    assert scores["score"].to_list() == pytest.approx([5.5, 2.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="source, source_no_input, destination"):
        layer_scores(CHANGES, layers=2, variant="sources")
    with pytest.raises(ValueError, match="outside"):
        layer_scores(CHANGES, layers=1)


def test_layer_scores_from_edge_changes(circuit):
    # all five changed edges come from layer-0 sources: 0.5 + 0.25 + 0.5 + 2.0 + 3.0
    changes = edge_changes(circuit(BEFORE), circuit(AFTER))
    assert layer_scores(changes, 2)["score"].to_list() == pytest.approx([6.25, 0.0])


def scores_frame(values: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"layer": list(range(len(values))), "score": values})


def test_critical_layers_topk_orders_by_score_then_lower_layer():
    scores = scores_frame([1.0, 5.0, 3.0, 5.0, 0.0, 2.0])
    assert critical_layers(scores, k=3) == [1, 3, 2]
    assert critical_layers(scores, k=6) == [1, 3, 2, 5, 0, 4]
    with pytest.raises(ValueError, match="k=7"):
        critical_layers(scores, k=7)
    with pytest.raises(ValueError, match="topk, mean_std"):
        critical_layers(scores, rule="top")


def test_critical_layers_mean_std_uses_population_std():
    # mean 1.708, population std 2.468 -> threshold 4.18 (sample std would give 4.41 and drop layer 3)
    scores = scores_frame([0.0, 6.0, 0.0, 4.25, 0.0, 0.0])
    assert critical_layers(scores, rule="mean_std") == [1, 3]
    assert critical_layers(scores_frame([1.0, 1.0]), rule="mean_std") == []


def test_score_agreement_gives_the_correlations_and_the_top_overlap_of_two_score_tables():
    from ftcircuits.circuits.compare import score_agreement

    names = [("input", f"a0.h{i}<q>") for i in range(10)]
    truth = pl.DataFrame({
        "source": [s for s, _ in names], "destination": [d for _, d in names],
        "score": [10.0, -9, 8, 7, 6, 5, 4, 3, 2, 1], "in_circuit": [False] * 10,
    })  # fmt: skip
    # the same ranks but the two largest swapped in magnitude, and one sign flipped
    method = truth.with_columns(score=pl.Series([9.0, -10, 8, 7, 6, 5, 4, 3, 2, -1])).reverse()
    agreement = score_agreement(method, truth, top=0.2)
    joined = truth.join(method, on=["source", "destination"])
    expected_pearson = np.corrcoef(joined["score"], joined["score_right"])[0, 1]
    assert agreement["pearson"] == pytest.approx(expected_pearson, rel=1e-12)
    ranks = [joined[c].rank("average").to_numpy() for c in ("score", "score_right")]
    assert agreement["spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1], rel=1e-12)
    assert agreement["top_overlap"] == 1.0  # the top 2 by |score| are the same two edges
    assert score_agreement(method, truth, top=0.3)["top_overlap"] == 1.0
    flipped = truth.with_columns(score=pl.Series([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
    assert score_agreement(flipped, truth, top=0.2)["top_overlap"] == 0.0
    with pytest.raises(ValueError, match="top"):
        score_agreement(method, truth, top=0)
