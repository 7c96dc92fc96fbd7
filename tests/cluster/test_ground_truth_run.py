"""Ground truth at every checkpoint on a real local Ray: ``jobs.circuits --run --set ground_truth=true``
puts the exact circuits in their own directory and leaves the method's where they were; ``jobs.analyze
--set ground_truth=true`` adds the agreement columns, which are ``score_agreement`` of the files on disk."""

from __future__ import annotations

import json
import re
import shutil

import polars as pl
import pytest

from ftcircuits.circuits.compare import circuit_similarity, score_agreement, score_spearman
from ftcircuits.circuits.io import read_circuit
from ftcircuits.cluster.run_circuits import run_circuits
from ftcircuits.config.discovery import CircuitRunConfig
from ftcircuits.config.loading import load_config
from ftcircuits.study.over_run import SUMMARY_FILE, circuits_dir, ground_truth_settings, run_inputs
from tests.conftest import TINY_RUN_STEPS, circuit_settings, circuits_of_run_args, dotted_overrides

SETTINGS = circuit_settings(8, 8, robustness=False, curve=False)


@pytest.mark.ray
@pytest.mark.slow
def test_ground_truth_columns_are_the_agreement_of_the_circuits_on_disk(ray_cluster, tiny_run, capsys):
    from jobs.analyze import main as analyze
    from jobs.circuits import main as circuits

    plain = load_config(CircuitRunConfig, None, [f"run={tiny_run}", *dotted_overrides(SETTINGS)])
    inputs = run_inputs(tiny_run)
    method, truth = (circuits_dir(tiny_run, s, inputs) for s in (plain, ground_truth_settings(plain)))
    on = ["--set", "ground_truth=true"]

    circuits([*circuits_of_run_args(tiny_run, SETTINGS), *on])
    assert "ground truth (exact patching) of every checkpoint" in capsys.readouterr().out
    keys = [f"step-{step:06d}" for step in TINY_RUN_STEPS]
    for directory in (method, truth):
        summary = pl.read_parquet(directory / SUMMARY_FILE)
        assert summary["key"].to_list() == keys and summary["model"].unique().to_list() == ["checkpoint"]
    again = run_circuits(tiny_run, plain)  # the method's cache is the same without ground truth
    assert (again.directory, again.computed, again.ground_truth) == (method, 0, None)

    analyze([*circuits_of_run_args(tiny_run, SETTINGS), *on, "--set", "analysis.explorer=true"])
    page = (method / "analysis" / "explorer.html").read_text()
    payload = json.loads(re.search(r'id="explorer-data"[^>]*>(.*?)</script>', page, re.S).group(1))
    assert [s["exactScores"] is not None for s in payload["snapshots"]] == [True] * len(keys)
    similarity = pl.read_parquet(method / "analysis" / "similarity.parquet").sort("step")
    assert similarity["step"].to_list() == list(TINY_RUN_STEPS)
    exact_base = read_circuit(truth / keys[0])[0]
    for key, row in zip(keys, similarity.iter_rows(named=True), strict=True):
        exact = read_circuit(truth / key)[0]
        ours = read_circuit(method / key)[0]
        agreement = score_agreement(ours, exact) | {
            "abs_spearman": score_spearman(ours, exact, absolute=True)
        }
        assert {k: row[f"truth_{k}"] for k in agreement} == agreement, key
        similar = circuit_similarity(exact_base, exact)
        assert (row["exact_node_jaccard_base"], row["exact_edge_jaccard_base"]) == (
            similar["node_jaccard"], similar["edge_jaccard"]
        ), key  # fmt: skip
        assert row["exact_faithfulness"] == read_circuit(truth / key)[1]["faithfulness"]["faithfulness"]
    headline = (method / "analysis" / "headline.json").read_text()
    assert '"exact_edge_jaccard_final_vs_base"' in headline and '"truth_pearson_change"' in headline
    assert (method / "analysis" / "ground_truth.png").is_file()

    shutil.rmtree(method / "analysis")
    (truth / SUMMARY_FILE).unlink()  # the exact circuits gone: refused, naming the command, nothing written
    with pytest.raises(FileNotFoundError) as error:
        analyze([*circuits_of_run_args(tiny_run, SETTINGS), *on])
    assert f"python -m jobs.circuits --run {tiny_run} --set ground_truth=true" in str(error.value)
    assert not (method / "analysis").exists()
