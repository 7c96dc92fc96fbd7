"""Ground truth at every checkpoint: the settings of the exact circuits (their own cache key, the method's
unchanged), the analysis' agreement and exact-Jaccard columns on hand-built edges tables, the headline, the
missing-circuits error, the figure and the report's section."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ftcircuits.circuits.compare import score_agreement, score_spearman
from ftcircuits.config.discovery import AnalysisConfig, CircuitRunConfig, CircuitRunSettings
from ftcircuits.config.loading import load_config
from ftcircuits.config.pipeline import PIPELINE_CIRCUITS, PipelineConfig
from ftcircuits.integrity import check_png
from ftcircuits.report.circuit_figures import ground_truth_agreement
from ftcircuits.study.ground_truth import (
    agreement_over_steps,
    exact_checkpoint_circuits,
    ground_truth_headline,
)
from ftcircuits.study.over_run import circuit_key, ground_truth_settings, write_summary

BEFORE = {("input", "logits"): 10.0, ("input", "m0"): 5.0, ("m0", "logits"): 4.0}
AFTER = {("input", "logits"): 10.0, ("input", "a1.h0<q>"): -5.0, ("a1.h0", "logits"): 4.0}


def test_the_exact_settings_change_only_the_method_and_drop_robustness():
    truth = ground_truth_settings(PIPELINE_CIRCUITS.model_copy(update={"ground_truth": True}))
    assert truth.discovery.model_dump() == PIPELINE_CIRCUITS.discovery.model_dump() | {"method": "exact"}
    assert (truth.robustness.enabled, truth.ground_truth, truth.actors) == (
        False,
        False,
        PIPELINE_CIRCUITS.actors,
    )
    assert circuit_key(truth) != circuit_key(PIPELINE_CIRCUITS)


def test_ground_truth_is_not_in_the_methods_cache_key():
    on = PIPELINE_CIRCUITS.model_copy(update={"ground_truth": True})
    assert circuit_key(on) == circuit_key(PIPELINE_CIRCUITS)


def test_an_exact_method_is_its_own_ground_truth():
    exact = CircuitRunSettings(discovery={"method": "exact", "examples": 8}, ground_truth=True)
    assert ground_truth_settings(exact) is exact


def test_agreement_and_exact_jaccard_per_step(hand_built_circuit):
    exact_base, exact_final = hand_built_circuit(BEFORE, None), hand_built_circuit(AFTER, None)
    scaled = exact_base.with_columns(pl.col("score") * 3)  # the method: the exact scores times 3 at the base
    flipped = exact_final.with_columns(-pl.col("score"))  # and of opposite sign at the final checkpoint
    table = agreement_over_steps([(0, scaled), (100, flipped)], [(100, exact_final), (0, exact_base)])
    assert table.columns == ["step", "truth_pearson", "truth_spearman", "truth_abs_spearman",
                             "truth_top_overlap", "exact_node_jaccard_base", "exact_edge_jaccard_base",
                             "exact_abs_score_spearman_base"]  # fmt: skip
    assert table["step"].to_list() == [0, 100]
    assert table["truth_pearson"].to_list() == pytest.approx([1.0, -1.0])
    assert table["truth_spearman"].to_list() == pytest.approx([1.0, -1.0])
    assert table["truth_abs_spearman"].to_list() == pytest.approx([1.0, 1.0])
    assert table["truth_top_overlap"].to_list() == [1.0, 1.0]  # |score| ranks the same edges first
    # exact circuits: base {input->logits, input->m0, m0->logits}, final shares input->logits only;
    # nodes {input, logits, m0} vs {input, logits, a1.h0}
    assert table["exact_edge_jaccard_base"].to_list() == [1.0, 1 / 5]
    assert table["exact_node_jaccard_base"].to_list() == [1.0, 2 / 4]


def test_the_columns_are_score_agreement_of_each_steps_tables(hand_built_circuit):
    exact = [(0, hand_built_circuit(BEFORE, None)), (5, hand_built_circuit(AFTER, None))]
    method = [(0, hand_built_circuit(AFTER, None)), (5, hand_built_circuit(BEFORE, 1.0))]
    table = agreement_over_steps(method, exact, top=0.1)
    for (step, edges), (_, truth), row in zip(method, exact, table.iter_rows(named=True), strict=True):
        expected = score_agreement(edges, truth, top=0.1) | {
            "abs_spearman": score_spearman(edges, truth, absolute=True)
        }
        assert row == pytest.approx(
            row | {"step": step} | {f"truth_{key}": value for key, value in expected.items()}
        )


def test_a_step_without_an_exact_circuit_is_refused(hand_built_circuit):
    edges = hand_built_circuit(BEFORE)
    with pytest.raises(ValueError, match=r"no exact circuit of steps \[100\]"):
        agreement_over_steps([(0, edges), (100, edges)], [(0, edges)])


def test_the_headline_holds_base_final_and_change():
    similarity = pl.DataFrame({
        "step": [100, 0, 200], "truth_pearson": [0.7, 0.75, 0.5], "truth_spearman": [0.6, 0.5, 0.25],
        "truth_abs_spearman": [0.8, 0.875, 0.75],
        "truth_top_overlap": [0.5, 0.5, 0.375], "exact_node_jaccard_base": [0.9, 1.0, 0.625],
        "exact_edge_jaccard_base": [0.5, 1.0, 0.125],
    })  # fmt: skip
    headline = ground_truth_headline(similarity)
    assert headline == pytest.approx({
        "truth_pearson_at_base": 0.75, "truth_pearson_at_final": 0.5, "truth_pearson_change": -0.25,
        "truth_spearman_at_base": 0.5, "truth_spearman_at_final": 0.25, "truth_spearman_change": -0.25,
        "truth_abs_spearman_at_base": 0.875, "truth_abs_spearman_at_final": 0.75,
        "truth_abs_spearman_change": -0.125,
        "truth_top_overlap_at_base": 0.5, "truth_top_overlap_at_final": 0.375,
        "truth_top_overlap_change": -0.125,
        "exact_node_jaccard_final_vs_base": 0.625, "exact_edge_jaccard_final_vs_base": 0.125,
    })  # fmt: skip


def summary_row(step: int) -> dict:
    metrics = ("faithfulness", "faithfulness_paper", "circuit_accuracy", "model_accuracy", "input_kl",
               "score_std", "edges_in_circuit", "nodes_in_circuit")  # fmt: skip
    return {"key": f"step-{step:06d}", "weights": "w", "model": "checkpoint", "step": step, "ratio": 0.0,
            **dict.fromkeys(metrics, 0.5)}  # fmt: skip


def test_missing_exact_circuits_name_the_command_that_computes_them(tmp_path):
    run = tmp_path / "run"
    out = run / "circuits" / "0123456789ab"
    command = f"python -m jobs.circuits --run {run} --set ground_truth=true"
    with pytest.raises(FileNotFoundError, match="has no exact circuits") as error:
        exact_checkpoint_circuits(out, [0, 100])
    assert command in str(error.value)
    out.mkdir(parents=True)
    write_summary(out, [summary_row(0)])
    with pytest.raises(FileNotFoundError, match=r"lacks the exact circuits of steps \[100\]") as error:
        exact_checkpoint_circuits(out, [0, 100])
    assert command in str(error.value)


GROUND_TRUTH = pl.DataFrame({
    "step": [0, 100, 200], "node_jaccard_base": [1.0, 0.6, 0.5], "edge_jaccard_base": [1.0, 0.2, 0.125],
    "truth_pearson": [0.75, 0.5, 0.25], "truth_spearman": [0.5, 0.5, 0.25],
    "truth_abs_spearman": [0.875, 0.75, 0.5], "truth_top_overlap": [0.5, 0.25, 0.0],
    "exact_node_jaccard_base": [1.0, 0.75, 0.625], "exact_edge_jaccard_base": [1.0, 0.25, 0.125],
})  # fmt: skip


def test_the_figure_draws_agreement_and_both_jaccards(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    path = ground_truth_agreement(GROUND_TRUTH.reverse(), tmp_path / "ground_truth.png")
    check_png(path, "")
    agree, jaccard = drawn[0].axes
    labels = ["Pearson", "Spearman", "Spearman of |score|", "top-5% overlap"]
    assert [line.get_label() for line in agree.lines] == labels
    np.testing.assert_array_equal(agree.lines[3].get_ydata(), [0.5, 0.25, 0.0])  # sorted by step
    assert [line.get_label() for line in jaccard.lines] == [
        "node Jaccard vs base (method)", "node Jaccard vs base (exact)",
        "edge Jaccard vs base (method)", "edge Jaccard vs base (exact)",
    ]  # fmt: skip
    np.testing.assert_array_equal(jaccard.lines[3].get_ydata(), [1.0, 0.25, 0.125])
    plt.close(drawn[0])


def test_every_job_takes_ground_truth(tiny_run):
    assert load_config(PipelineConfig, None, ["circuits.ground_truth=true"]).circuits.ground_truth is True
    assert PipelineConfig().circuits.ground_truth is False  # off by default: exact patching is slow
    for schema in (CircuitRunConfig, AnalysisConfig):
        assert load_config(schema, None, [f"run={tiny_run}", "ground_truth=true"]).ground_truth is True
