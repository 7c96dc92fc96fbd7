"""Headline numbers over seeds: per-seed rows, mean ± std, critical-layer stability, similarity bands."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from ftcircuits.study.seeds import (
    budget_bands,
    layer_stability,
    seed_summary,
    seed_table,
    similarity_bands,
    write_across,
)

HEADLINES = {
    42: {"final_step": 1000, "edge_jaccard_final_vs_base": 0.5, "degenerate_baselines": [],
         "critical_layers_topk": {"source": [0, 3], "destination": [5, 0]}, "flag": True,
         "critical_layers_mean_std": {"source": [0], "destination": [5]},
         "robustness_mean_edge_jaccard_base": 0.9},
    0: {"final_step": 1000, "edge_jaccard_final_vs_base": 0.7, "degenerate_baselines": ["random-init"],
        "critical_layers_topk": {"source": [0, 2], "destination": [5, 4]}, "flag": False,
        "critical_layers_mean_std": {"source": [0], "destination": []}},
    1: {"final_step": 1000, "edge_jaccard_final_vs_base": 0.6, "degenerate_baselines": [],
        "critical_layers_topk": {"source": [0, 3], "destination": [5, 0]}, "flag": True,
        "critical_layers_mean_std": {"source": [0], "destination": [5]}},
}  # fmt: skip


def test_seed_table_and_summary_are_mean_and_sample_std():
    table = seed_table(HEADLINES)
    # no lists, no flags, and no number only one seed has (robustness)
    assert table.columns == ["seed", "final_step", "edge_jaccard_final_vs_base"]
    summary = seed_summary(table)
    assert summary["edge_jaccard_final_vs_base"]["mean"] == pytest.approx(0.6)
    assert summary["edge_jaccard_final_vs_base"]["std"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0) / 2))
    assert summary["final_step"] == {"mean": 1000.0, "std": 0.0}


def test_layer_stability_counts_the_seeds_choosing_each_layer():
    table = layer_stability(HEADLINES)
    assert table.rows() == [
        ("mean_std", "destination", 5, 2, 3), ("mean_std", "source", 0, 3, 3),
        ("topk", "destination", 0, 2, 3), ("topk", "destination", 4, 1, 3), ("topk", "destination", 5, 3, 3),
        ("topk", "source", 0, 3, 3), ("topk", "source", 2, 1, 3), ("topk", "source", 3, 2, 3),
    ]  # fmt: skip


def test_write_across_writes_the_per_seed_values_and_the_summary(tmp_path):
    similarity = pl.DataFrame(
        {"step": [0, 100], "node_jaccard_base": [1.0, 0.8], "edge_jaccard_base": [1.0, 0.4]}
    )
    summary = write_across(HEADLINES, dict.fromkeys(HEADLINES, similarity), tmp_path / "across")
    written = json.loads((tmp_path / "across" / "headline.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["seeds"]["0"]["edge_jaccard_final_vs_base"] == 0.7
    assert written["summary"]["edge_jaccard_final_vs_base"]["mean"] == pytest.approx(0.6)
    assert len(written["critical_layer_stability"]) == 8
    assert written["by_budget"] == []  # these headlines have no budget curve
    assert sorted(p.name for p in (tmp_path / "across").iterdir()) == [
        "budget_bands.parquet", "headline.json", "layer_stability.parquet", "seeds.parquet",
        "similarity_bands.parquet", "similarity_bands.png"]  # fmt: skip


def test_similarity_bands_per_step():
    def run(values: list[float]) -> pl.DataFrame:
        return pl.DataFrame({"step": [0, 100], "node_jaccard_base": [1.0, values[0]],
                             "edge_jaccard_base": [1.0, values[1]]})  # fmt: skip

    bands = similarity_bands({0: run([0.8, 0.4]), 1: run([0.6, 0.2])})
    assert bands["step"].to_list() == [0, 100] and bands["seeds"].to_list() == [2, 2]
    assert bands["node_jaccard_base_mean"].to_list() == pytest.approx([1.0, 0.7])
    assert bands["edge_jaccard_base_std"].to_list() == pytest.approx([0.0, math.sqrt(0.02)])


def test_budget_bands_are_mean_and_std_per_budget():
    def headline(edge: float) -> dict:
        return {"jaccard_final_vs_base_by_budget": [
            {"budget": 0.01, "edges": 36, "node_jaccard": 0.4, "edge_jaccard": edge},
            {"budget": 0.05, "edges": 179, "node_jaccard": 0.6, "edge_jaccard": 2 * edge}]}  # fmt: skip

    bands = budget_bands({0: headline(0.1), 1: headline(0.2)})
    assert bands["budget"].to_list() == [0.01, 0.05] and bands["seeds"].to_list() == [2, 2]
    assert bands["edge_jaccard_mean"].to_list() == pytest.approx([0.15, 0.3])
    assert bands["edge_jaccard_std"].to_list() == pytest.approx([math.sqrt(0.005), math.sqrt(0.02)])
    assert bands["node_jaccard_std"].to_list() == [0.0, 0.0]
