"""A compositional task's circuit from its subtasks' circuits: merge, then faithfulness over edge budgets.

The paper's use: the union of the subtasks' circuits stands in for the
compositional task's own circuit. ``merged_budget_curve`` measures how well it
does, on the compositional task's pairs, against the task's own circuit at the
same budgets.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from ftcircuits.circuits.attribution import ModelProbe, PairBatch
from ftcircuits.circuits.compare import circuit_similarity
from ftcircuits.circuits.evaluation import circuit_evaluation
from ftcircuits.circuits.io import circuit_mask, edges_table
from ftcircuits.circuits.merge import merge_circuits
from ftcircuits.circuits.selection import edge_budget, select_circuit, top_n_edges


def merged_budget_curve(
    probe: ModelProbe,
    batches: Sequence[PairBatch],
    subtasks: Sequence[pl.DataFrame],
    own: pl.DataFrame,
    fractions: Sequence[float],
    nodes: str = "union",
    score: str = "mean",
    metric: str = "kl",
) -> pl.DataFrame:
    """Return per edge fraction the faithfulness and circuit accuracy of the merged and the own circuit.

    At each budget every subtask's circuit is first re-selected as the top
    ``fraction`` of its scores, unpruned (so the candidates fill the budget), merged,
    and cut to the top ``fraction`` of all edges; the own circuit is top-n of
    the task's own scores with dead nodes pruned, as discovery selects it.
    """
    graph = probe.graph
    device = batches[0].clean.input_ids.device
    own_scores, _ = circuit_mask(own, graph)
    sub_scores = [circuit_mask(sub, graph)[0] for sub in subtasks]
    rows = []
    for fraction in fractions:
        target = edge_budget(graph, fraction=fraction)
        reselected = [edges_table(s, top_n_edges(s, graph, target), graph) for s in sub_scores]
        merged = merge_circuits(reselected, target, nodes=nodes, score=score)
        circuits = {
            f"merged ({nodes}, {score})": circuit_mask(merged, graph)[1],
            "own": select_circuit(own_scores, graph, "topn", count=target),
        }
        for label, mask in circuits.items():
            metrics = circuit_evaluation(probe, batches, mask.to(device), metric)
            rows.append({"fraction": fraction, "circuit": label, "edges": int(mask.sum()),
                         "faithfulness": metrics["faithfulness"],
                         "faithfulness_paper": metrics["faithfulness_paper"],
                         "circuit_accuracy": metrics["circuit_accuracy"]})  # fmt: skip
    return pl.DataFrame(rows)


def merged_similarity(subtasks: Sequence[pl.DataFrame], own: pl.DataFrame, **rules) -> dict:
    """Return node/edge Jaccard of the merged circuit (cut to the own circuit's edge count) vs the own one."""
    merged = merge_circuits(subtasks, int(own["in_circuit"].sum()), **rules)
    return circuit_similarity(own, merged)
