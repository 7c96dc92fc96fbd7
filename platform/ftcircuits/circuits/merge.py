"""Compositional merge: one circuit from several circuits over the same graph (the paper's merge).

Nodes are the union (or intersection) of the circuits' node sets; candidate
edges are the circuits' edges whose two endpoint nodes are both in that set; a
candidate in several circuits takes the mean (max, min) of its scores in the
circuits that contain it; the top ``edges`` candidates by |score| are
kept. Isolated nodes drop out by themselves, as nodes derive from edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import polars as pl

from ftcircuits.circuits.compare import KEY, check_same_edges, circuit_nodes, destination_node
from ftcircuits.options import NodeRule, ScoreRule, check_choice

_COMBINE = {"mean": pl.mean_horizontal, "max": pl.max_horizontal, "min": pl.min_horizontal}


def _validate(circuits: Sequence[pl.DataFrame], edges: int, nodes: NodeRule, score: ScoreRule) -> None:
    """Raise ValueError on no circuits, differing edge rows, edges < 1 or an unknown option."""
    if not circuits:
        raise ValueError("merge needs at least one circuit")
    if edges < 1:
        raise ValueError(f"edges (the merged circuit's edge count) must be >= 1, got {edges}")
    check_choice(NodeRule, nodes, "node rule")
    check_choice(ScoreRule, score, "score rule")
    for i, other in enumerate(circuits[1:], start=1):
        try:
            check_same_edges(circuits[0], other)
        except ValueError as error:
            raise ValueError(f"circuit {i} does not match circuit 0: {error}") from None


def _wide(circuits: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Return the first table's edge rows (in its order) with ``score_i`` and ``in_i`` of every circuit."""
    parts = [
        c.select(*KEY, pl.col("score").alias(f"score_{i}"), pl.col("in_circuit").alias(f"in_{i}"))
        for i, c in enumerate(circuits)
    ]
    first = parts[0].with_row_index("row")
    return reduce(lambda acc, part: acc.join(part, on=KEY, how="left"), parts[1:], first).sort("row")


def merge_circuits(
    circuits: Sequence[pl.DataFrame],
    edges: int,
    nodes: NodeRule = "union",
    score: ScoreRule = "mean",
) -> pl.DataFrame:
    """Return the merged circuit as an edges table (every graph edge a row, in the first table's order).

    ``score`` is the merged score for candidate edges and the mean over all circuits for the others;
    ``in_circuit`` marks the top ``edges`` candidates by |score| (ties: earlier row first).
    """
    _validate(circuits, edges, nodes, score)
    node_sets = [circuit_nodes(c) for c in circuits]
    node_set = set.union(*node_sets) if nodes == "union" else set.intersection(*node_sets)
    n = range(len(circuits))
    in_any = pl.any_horizontal(pl.col(f"in_{i}") for i in n)
    endpoints = pl.col("source").is_in(list(node_set)) & destination_node().is_in(list(node_set))
    in_scores = [pl.when(pl.col(f"in_{i}")).then(pl.col(f"score_{i}").cast(pl.Float64)) for i in n]
    all_mean = pl.mean_horizontal(pl.col(f"score_{i}").cast(pl.Float64) for i in n)
    table = (
        _wide(circuits)
        .with_columns(candidate=in_any & endpoints)
        .with_columns(merged=pl.when("candidate").then(_COMBINE[score](*in_scores)).otherwise(all_mean))
    )
    kept = (
        table.filter("candidate")
        .sort([pl.col("merged").abs(), pl.col("row")], descending=[True, False])
        .head(edges)["row"]
    )
    return table.select(
        *KEY,
        score=pl.col("merged").cast(pl.Float32),
        in_circuit=pl.col("row").is_in(kept.implode()),
    )
