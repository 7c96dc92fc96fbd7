"""jobs.compare_attribution's stage on a small LoRA run: every valid (method, intervention) cell on the base
and final checkpoints, its CPR as the faithfulness curve gives it, agreement with exact, the cache."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from ftcircuits.circuits.compare import score_agreement
from ftcircuits.circuits.discover import discover_circuit, discovery_batches
from ftcircuits.circuits.evaluation import faithfulness_curve
from ftcircuits.circuits.io import read_circuit
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.config.attribution import AttributionCompareConfig
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.models.loader import load_model
from ftcircuits.models.swap import CheckpointWeights
from ftcircuits.run_layout import RUN_CONFIG_FILE, index_path
from ftcircuits.study import attribution_comparison
from ftcircuits.study.attribution_comparison import (
    FIGURE_FILE,
    MARKDOWN_FILE,
    TABLE_FILE,
    cells_dir,
    compare_attribution,
)
from ftcircuits.study.over_run import run_inputs
from ftcircuits.tasks.io import read_items
from jobs import compare_attribution as job
from tests.conftest import TINY_RUN_STEPS

SMALL = [
    "discovery.examples=16", "discovery.batch_size=8", "discovery.steps=2", "threads=1",
    "budgets=[0.01,0.05,0.2,1]",
]  # fmt: skip
SKIPPED = {
    ("clean-corrupted", "zero"),
    ("eap-ig-inputs", "zero"),
    ("clean-corrupted", "mean"),
    ("eap-ig-inputs", "mean"),
}


def small_config(run, out, *overrides: str) -> AttributionCompareConfig:
    return load_config(AttributionCompareConfig, None, [f"run={run}", f"out={out}", *SMALL, *overrides])


@pytest.fixture(scope="module")
def compared(tiny_run, tmp_path_factory):
    config = small_config(tiny_run, tmp_path_factory.mktemp("attribution"))
    return config, compare_attribution(config)


def test_every_valid_pair_is_a_cell_on_base_and_final_and_the_others_are_listed(compared):
    config, result = compared
    table = result.table
    assert table.height == 22 and result.computed == 22 and result.reused == 0
    assert table.group_by("checkpoint", "step").len().sort("step").rows() == [
        ("base", 0, 11),
        ("final", TINY_RUN_STEPS[-1], 11),
    ]
    pairs = set(table.filter(pl.col("checkpoint") == "base").select("method", "intervention").rows())
    every = {(m, i) for m in config.methods for i in config.interventions}
    assert pairs == every - SKIPPED
    assert {tuple(note.split(" skipped")[0].split(" with ")) for note in result.notes} == SKIPPED
    assert "eap-ig-inputs with zero skipped: method 'eap-ig-inputs' interpolates" in "\n".join(result.notes)


def test_exact_agrees_with_itself_exactly(compared):
    exact = compared[1].table.filter(pl.col("method") == "exact")
    assert exact.height == 6
    assert exact.select("pearson", "spearman", "top_overlap").unique().rows() == [(1.0, 1.0, 1.0)]


def test_a_cells_cpr_is_its_faithfulness_curves_area(compared, tiny_run):
    config, result = compared
    inputs = run_inputs(tiny_run)
    weights = CheckpointWeights(load_model(inputs.base_model))
    weights.swap_to(inputs.checkpoints["path"][-1])
    items = config.discovery.sample(read_items(inputs.data, "circuit"))
    attribution, selection = config.discovery.attribution_config(), config.discovery.selection_config()
    found = discover_circuit(weights.loaded, items, attribution, selection, 8)
    batches, _ = discovery_batches(weights.loaded, items, attribution, 8)
    probe = ModelProbe(weights.loaded.model, weights.loaded.architecture)
    curve = faithfulness_curve(probe, batches, found.scores, "kl", config.budgets)
    row = result.table.filter((pl.col("checkpoint") == "final") & (pl.col("method") == "eap-ig-inputs")).row(
        0, named=True
    )
    assert (row["cpr"], row["cmd"]) == (curve["area"], curve["area_abs_gap"])
    assert row["faithfulness_by_budget"] == curve["faithfulness"] and row["budgets"] == config.budgets
    assert row["faithfulness"] == found.metrics["faithfulness"]


def test_agreement_is_against_exact_under_the_same_intervention(compared, tiny_run):
    config, result = compared
    directory = cells_dir(config, run_inputs(tiny_run))
    truth, _ = read_circuit(directory / "base-exact-mean")
    scores, _ = read_circuit(directory / "base-eap-mean")
    row = result.table.filter(
        (pl.col("checkpoint") == "base") & (pl.col("method") == "eap") & (pl.col("intervention") == "mean")
    ).row(0, named=True)
    expected = score_agreement(scores, truth)
    assert {k: row[k] for k in expected} == expected


def test_the_table_markdown_and_figure_are_written(compared):
    _, result = compared
    assert pl.read_parquet(result.out / TABLE_FILE).equals(result.table)
    markdown = (result.out / MARKDOWN_FILE).read_text()
    assert markdown == result.markdown and markdown.count("\n| base (step 0) |") == 11
    assert (result.out / FIGURE_FILE).stat().st_size > 0


def test_a_rerun_reuses_every_cell_and_recomputes_nothing(compared, monkeypatch, capsys):
    config, result = compared

    def refuse(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr(attribution_comparison, "discover_circuit", refuse)
    again = compare_attribution(config)
    assert (again.computed, again.reused) == (0, 22) and again.table.equals(result.table)
    job.main(["--run", str(config.run), *[a for o in [f"out={config.out}", *SMALL] for a in ("--set", o)]])
    assert "0 cells computed, 22 reused" in capsys.readouterr().out


def test_one_checkpoint_without_exact_has_empty_agreement_columns(tiny_run, tmp_path):
    config = small_config(tiny_run, tmp_path, "methods=[eap]", "interventions=[zero]", "checkpoints=[final]")
    result = compare_attribution(config)
    assert result.table.select("checkpoint", "method", "intervention", "pearson").rows() == [
        ("final", "eap", "zero", None)
    ]
    assert result.notes == ["exact is not among the methods: no agreement columns"]


def test_an_unknown_run_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"no fine-tuning run at '.*nowhere'"):
        small_config(tmp_path / "nowhere", tmp_path / "out")


def test_a_run_with_one_checkpoint_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "checkpoints" / "step-000000", run / "checkpoints" / "step-000000")
    (run / RUN_CONFIG_FILE).write_text((tiny_run / RUN_CONFIG_FILE).read_text())
    index = pl.read_parquet(index_path(tiny_run)).head(1)
    index.with_columns(path=pl.lit(str(run / "checkpoints" / "step-000000"))).write_parquet(index_path(run))
    with pytest.raises(SystemExit) as exit_status:
        job.main(["--run", str(run), "--set", f"out={tmp_path / 'out'}"])
    assert exit_status.value.code == 2
    assert "checkpoints at steps [0]: comparing base and final needs step 0 and a later one" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


def test_no_valid_pair_is_refused(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match=r"no \(method, intervention\) pair to compare: eap-ig-inputs with"):
        small_config(tiny_run, tmp_path, "methods=[eap-ig-inputs]", "interventions=[zero,mean]")


def test_duplicate_methods_are_refused(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="methods"):
        small_config(tiny_run, tmp_path, "methods=[eap,eap]")


def test_cells_of_other_settings_are_kept_apart(compared, tiny_run):
    config, _ = compared
    other = config.model_copy(update={"budgets": [0.1, 1.0]})
    inputs = run_inputs(tiny_run)
    assert cells_dir(other, inputs) != cells_dir(config, inputs)
    method_only = config.model_copy(update={"methods": ["eap"]})
    assert cells_dir(method_only, inputs) == cells_dir(config, inputs)
    assert json.dumps(config.budgets) == json.dumps(sorted(config.budgets))
