"""Discovering a circuit on a dataset: input checks, the file format, the job."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.discover import discover_circuit
from ftcircuits.circuits.evaluation import circuit_evaluation
from ftcircuits.circuits.io import circuit_mask, edges_table, read_circuit, write_circuit
from ftcircuits.circuits.pairs import PairLengthError, pair_batches
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.selection import Selection, edge_count, select_circuit
from ftcircuits.encoding import AnswerTokenError
from ftcircuits.models.loader import load_model
from ftcircuits.tasks import build_dataset, read_items, task_family, write_dataset
from jobs import circuits as circuits_job

PREFIX = "Calculate the result of the following arithmetic expression and provide only the final answer: "


def items(rows: list[tuple[str, str, str, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema=["prompt", "answer", "corrupted_prompt", "corrupted_answer"], orient="row"
    ).with_columns(pl.lit("+").alias("kind"))


def test_unequal_pair_lengths_are_rejected_before_any_model_work(tokenizer):
    bad = items([(f"{PREFIX}1 + 2 =", "3", f"{PREFIX}(1 - 2) =", None)])
    with pytest.raises(
        PairLengthError, match="item 0: clean prompt has 20 tokens but corrupted prompt has 22"
    ):
        pair_batches(tokenizer, bad, 8)


def test_multi_token_answers_and_missing_corrupted_answers_are_rejected(tokenizer):
    with pytest.raises(AnswerTokenError, match="'12345'"):
        pair_batches(tokenizer, items([(f"{PREFIX}1 + 2 =", "12345", f"{PREFIX}1 - 2 =", None)]), 8)
    with pytest.raises(ValueError, match="corrupted answer"):
        pair_batches(tokenizer, items([(f"{PREFIX}1 + 2 =", "3", f"{PREFIX}1 - 2 =", None)]), 8, "cpu", True)


@pytest.fixture()
def tiny_setup(tmp_path, model_dir, tokenizer):
    data, _ = build_dataset(task_family("addsub", range=100), tokenizer, 60, seed=0)
    data_dir = write_dataset(tmp_path / "addsub-100", data, {"task": "addsub", "parameters": {"range": 100}})
    return model_dir, data_dir, data


def test_discovered_circuit_is_within_budget_and_round_trips_through_the_file(tmp_path, tiny_setup):
    model_dir, _, data = tiny_setup
    loaded = load_model(str(model_dir))
    found = discover_circuit(
        loaded, data.head(12), AttributionConfig(steps=2), Selection(budget=0.1), batch_size=5
    )
    assert 0 < found.metrics["edges_in_circuit"] <= round(0.1 * found.graph.n_edges)
    assert found.metrics["edges_in_circuit"] == int(found.circuit.sum())
    assert not (found.circuit & ~found.graph.edge_mask).any()
    # the circuit is the selection (top 10%, dead nodes pruned) of the scores it reports
    assert torch.equal(found.circuit, select_circuit(found.scores, found.graph, "top", budget=0.1))
    path = write_circuit(tmp_path / "c", edges_table(found.scores, found.circuit, found.graph), {"task": "x"})
    edges, meta = read_circuit(tmp_path / "c")
    assert path.name == "c.json" and meta["edges_in_circuit"] == found.metrics["edges_in_circuit"]
    assert edges.height == found.graph.n_edges and edges.columns == [
        "source",
        "destination",
        "score",
        "in_circuit",
    ]
    assert edges.filter(pl.col("in_circuit")).height == found.metrics["edges_in_circuit"]


def test_circuits_job_writes_a_circuit_file(tmp_path, tiny_setup):
    model_dir, data_dir, _ = tiny_setup
    out = tmp_path / "circuits"
    circuits_job.main(
        ["--model", str(model_dir), "--data", str(data_dir), "--set", "discovery.examples=8",
         "--set", "discovery.steps=2", "--set", f"out={out}"]
    )  # fmt: skip
    meta = json.loads((out / "addsub-100-circuit-eap-ig-inputs-kl.json").read_text())
    assert meta["task"] == "addsub" and meta["examples"] == 8 and meta["attribution"]["steps"] == 2
    edges, _ = read_circuit(out / "addsub-100-circuit-eap-ig-inputs-kl")
    loaded = load_model(str(model_dir))
    probe = ModelProbe(loaded.model, loaded.architecture)
    assert edges.height == probe.graph.n_edges
    in_circuit = int(edges["in_circuit"].sum())
    assert meta["edges_in_circuit"] == meta["faithfulness"]["edges_in_circuit"] == in_circuit
    assert 0 < in_circuit <= edge_count(probe.graph, budget=0.05)  # the default budget
    # the faithfulness written is that of the circuit written, on the 8 examples drawn (seed 0) from the split
    _, circuit = circuit_mask(edges, probe.graph)
    drawn = read_items(data_dir, "circuit").with_row_index("row").sample(8, seed=0).sort("row")
    batches = pair_batches(loaded.tokenizer, drawn, 32)
    expected = circuit_evaluation(probe, batches, circuit, "kl")
    assert meta["faithfulness"]["faithfulness"] == pytest.approx(expected["faithfulness"], rel=1e-5)
