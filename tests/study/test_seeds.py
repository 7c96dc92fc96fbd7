"""Headline numbers over seeds: per-seed rows, mean ± std, critical-layer stability, similarity bands."""

from __future__ import annotations

import math

import polars as pl
import pytest

from ftcircuits.study.seeds import layer_stability, seed_summary, seed_table, similarity_bands

HEADLINES = {
    42: {"final_step": 1000, "edge_jaccard_final_vs_base": 0.5, "degenerate_baselines": [],
         "critical_layers_topk": {"source": [0, 3], "destination": [5, 0]}, "flag": True},
    0: {"final_step": 1000, "edge_jaccard_final_vs_base": 0.7, "degenerate_baselines": ["random-init"],
        "critical_layers_topk": {"source": [0, 2], "destination": [5, 4]}, "flag": False},
    1: {"final_step": 1000, "edge_jaccard_final_vs_base": 0.6, "degenerate_baselines": [],
        "critical_layers_topk": {"source": [0, 3], "destination": [5, 0]}, "flag": True},
}  # fmt: skip


def test_seed_table_and_summary_are_mean_and_sample_std():
    table = seed_table(HEADLINES)
    assert table.columns == ["seed", "final_step", "edge_jaccard_final_vs_base"]  # no lists, no flags
    summary = seed_summary(table)
    assert summary["edge_jaccard_final_vs_base"]["mean"] == pytest.approx(0.6)
    assert summary["edge_jaccard_final_vs_base"]["std"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0) / 2))
    assert summary["final_step"] == {"mean": 1000.0, "std": 0.0}


def test_layer_stability_counts_the_seeds_choosing_each_layer():
    table = layer_stability(HEADLINES)
    assert table.rows() == [
        ("destination", 0, 2, 3), ("destination", 4, 1, 3), ("destination", 5, 3, 3),
        ("source", 0, 3, 3), ("source", 2, 1, 3), ("source", 3, 2, 3),
    ]  # fmt: skip


def test_similarity_bands_per_step():
    def run(values: list[float]) -> pl.DataFrame:
        return pl.DataFrame({"step": [0, 100], "node_jaccard_base": [1.0, values[0]],
                             "edge_jaccard_base": [1.0, values[1]]})  # fmt: skip

    bands = similarity_bands({0: run([0.8, 0.4]), 1: run([0.6, 0.2])})
    assert bands["step"].to_list() == [0, 100] and bands["seeds"].to_list() == [2, 2]
    assert bands["node_jaccard_base_mean"].to_list() == pytest.approx([1.0, 0.7])
    assert bands["edge_jaccard_base_std"].to_list() == pytest.approx([0.0, math.sqrt(0.02)])
