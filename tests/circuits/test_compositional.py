"""Merged subtask circuits on the compositional task: budgets are met and the full budget is the model."""

from __future__ import annotations

import pytest

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.discover import discover_circuit
from ftcircuits.circuits.io import edges_table
from ftcircuits.circuits.pairs import pair_batches
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.selection import Selection, edge_count
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.loader import LoadedModel
from ftcircuits.study.compositional import merged_budget_curve, merged_similarity
from ftcircuits.tasks import build_dataset, task_family


@pytest.fixture()
def setting(small_model, tokenizer):
    loaded = LoadedModel(small_model, tokenizer, describe_architecture(small_model.config), "small")
    circuits, items = {}, {}
    for part in ("inner", "outer", "full"):
        built, _ = build_dataset(task_family("compositional", part=part), tokenizer, 60, seed=0)
        items[part] = built.head(8)
        found = discover_circuit(loaded, items[part], AttributionConfig(steps=2), Selection(budget=0.1), 8)
        circuits[part] = edges_table(found.scores, found.circuit, found.graph)
    return loaded, circuits, items


def test_merged_circuit_meets_each_budget_and_the_full_budget_is_faithful(setting, tokenizer):
    loaded, circuits, items = setting
    probe = ModelProbe(loaded.model, loaded.architecture)
    batches = pair_batches(tokenizer, items["full"], 8)
    subtasks = [circuits["inner"], circuits["outer"]]
    curve = merged_budget_curve(probe, batches, subtasks, circuits["full"], [0.05, 1.0])
    assert curve["circuit"].to_list() == ["merged (union, mean)", "own"] * 2
    merged = curve.filter(curve["circuit"] != "own")
    assert merged["edges"][0] == edge_count(probe.graph, budget=0.05)
    assert merged["edges"][1] == probe.graph.n_edges  # every edge: the model itself
    assert merged["faithfulness"][1] == pytest.approx(1.0, abs=1e-4)


def test_merging_a_circuit_with_itself_gives_it_back(setting):
    _, circuits, _ = setting
    same = merged_similarity([circuits["full"], circuits["full"]], circuits["full"])
    assert same["edge_jaccard"] == 1.0 and same["node_jaccard"] == 1.0
    union = merged_similarity([circuits["inner"], circuits["outer"]], circuits["full"], nodes="union")
    meet = merged_similarity([circuits["inner"], circuits["outer"]], circuits["full"], nodes="intersection")
    assert union["edges_after"] == circuits["full"]["in_circuit"].sum() >= meet["edges_after"]
