"""The report stage checks every input before it writes anything: the analysis tables and headline, the
comparison's table, every figure, the studied run's record. A damaged one (truncated, empty, a wrong schema,
content that does not match) is one DamagedFileError naming it and the stage that writes it again; the
pipeline job exits 2 with that one line. A damaged accuracy cache is recomputed."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import polars as pl
import pytest

from ftcircuits.config.pipeline import PipelineConfig
from ftcircuits.integrity import DamagedFileError, check_png
from ftcircuits.run_layout import finetune_rebuild, run_config_path
from ftcircuits.study.accuracy import cached_accuracy
from ftcircuits.study.ground_truth import ground_truth_headline
from ftcircuits.study.report import (
    GROUND_TRUTH_TITLE,
    StudyOutputs,
    ground_truth_section,
    not_computed,
    render_study_report,
    report_rebuild,
)
from jobs import pipeline as pipeline_job


def png(path: Path) -> Path:
    """Write a whole 1x1 PNG (signature, IHDR, IDAT, IEND) to ``path``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


ANALYSIS_FIGURES = ("similarity", "jaccard_by_budget", "faithfulness_by_checkpoint", "robustness",
                    "layer_scores", "circuit_changes")  # fmt: skip


@pytest.fixture()
def outputs(tmp_path) -> StudyOutputs:
    """A study's outputs as its stages leave them, small: the analysis, the comparison, the run's record."""
    analysis, comparison, run = tmp_path / "analysis", tmp_path / "comparison", tmp_path / "run"
    analysis.mkdir()
    pl.DataFrame({"step": [0, 9], "node_jaccard_base": [1.0, 0.8], "edge_jaccard_base": [1.0, 0.5],
                  "abs_score_spearman_base": [1.0, 0.3], "accuracy": [0.1, 0.5]}).write_parquet(
        analysis / "similarity.parquet")  # fmt: skip
    pl.DataFrame(
        {"budget": [0.05], "edges": [10], "node_jaccard": [0.8], "edge_jaccard": [0.5]}
    ).write_parquet(analysis / "similarity_by_budget.parquet")
    pl.DataFrame({"step": [0, 9], "smallest_faithful_budget": [0.1, None]}).write_parquet(
        analysis / "smallest_faithful_budget.parquet"
    )
    pl.DataFrame({"baseline": ["permuted"], "gap": [0.2], "keeps_gap": [True]}).write_parquet(
        analysis / "robustness_baselines.parquet"
    )
    headline = {"final_step": 9, "node_jaccard_final_vs_base": 0.8, "edge_jaccard_final_vs_base": 0.5,
                "abs_score_spearman_final_vs_base": 0.3, "critical_layers_topk": {"source": [0]},
                "critical_layers_mean_std": {"source": [0, 1]}}  # fmt: skip
    (analysis / "headline.json").write_text(json.dumps(headline))
    for name in ANALYSIS_FIGURES:
        png(analysis / f"{name}.png")
    comparison.mkdir()
    pl.DataFrame({"task": ["addsub-100"] * 2, "method": ["lora", "circuitlora"], "seed": [42, 42],
                  "trainable_params": [200, 190], "param_share": [0.1, 0.095], "accuracy": [0.5, 0.6],
                  "steps": [9, 9]}).write_parquet(comparison / "comparison.parquet")  # fmt: skip
    png(comparison / "comparison.png")
    run.mkdir()
    record = {"model": "tiny", "task": {"name": "addsub", "range": 100}, "method": {"name": "lora"},
              "train": {"seed": 42}}  # fmt: skip
    run_config_path(run).write_text(json.dumps(record))
    return StudyOutputs(
        pipeline=PipelineConfig(), run=run, analysis=analysis, comparison=comparison,
        accuracy={"base": {"addsub-100": 0.1}, "lora, step 9": {"addsub-100": 0.5}},
        accuracy_figure=png(tmp_path / "accuracy" / "accuracy.png"),
    )  # fmt: skip


def test_whole_inputs_render(outputs, tmp_path):
    report = render_study_report(outputs, tmp_path / "report.html")
    assert report.read_text().count("<img") == len(ANALYSIS_FIGURES) + 2


def test_the_report_links_the_explorer_copied_beside_it(outputs, tmp_path):
    out = tmp_path / "site" / "report.html"
    html = render_study_report(outputs, out).read_text()
    assert "Not computed in this study (analysis.explorer=false)" in html
    assert not (out.parent / "explorer.html").exists()
    (outputs.analysis / "explorer.html").write_text("<!DOCTYPE html><title>the explorer</title>")
    html = render_study_report(outputs, out).read_text()
    assert '<a href="explorer.html">Open the circuit explorer</a>' in html
    assert (out.parent / "explorer.html").read_text() == "<!DOCTYPE html><title>the explorer</title>"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def rewrite(path: Path, edit) -> None:
    if path.suffix == ".parquet":
        edit(pl.read_parquet(path)).write_parquet(path)
    else:
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))


ANALYSIS, COMPARISON, ACCURACY = (report_rebuild(stage) for stage in ("analysis", "comparison", "accuracy"))
CASES = [  # (the input, its damage, the problem stated, how it is rebuilt)
    ("analysis/similarity.parquet", truncate, "not a readable parquet file, truncated", ANALYSIS),
    ("analysis/similarity.parquet", empty, "the file is empty (0 bytes)", ANALYSIS),
    ("analysis/similarity_by_budget.parquet", lambda p: rewrite(p, lambda t: t.drop("edge_jaccard")),
     "wrong schema: no column 'edge_jaccard' (has ['budget', 'edges', 'node_jaccard'])", ANALYSIS),
    ("analysis/robustness_baselines.parquet", lambda p: rewrite(p, lambda t: t.cast({"keeps_gap": str})),
     "wrong schema: column 'keeps_gap' is String, expected Boolean", ANALYSIS),
    ("analysis/smallest_faithful_budget.parquet", truncate, "not a readable parquet file", ANALYSIS),
    ("comparison/comparison.parquet", lambda p: rewrite(p, lambda t: t.drop("steps")),
     "wrong schema: no column 'steps'", COMPARISON),
    ("comparison/comparison.parquet", empty, "the file is empty (0 bytes)", COMPARISON),
    ("analysis/headline.json", truncate, "not valid JSON, truncated or overwritten", ANALYSIS),
    ("analysis/headline.json", empty, "the file is empty (0 bytes)", ANALYSIS),
    ("analysis/headline.json", lambda p: rewrite(p, lambda h: {k: h[k] for k in h if k != "final_step"}),
     "wrong schema: no key 'final_step'", ANALYSIS),
    ("analysis/similarity.png", truncate, "truncated: the PNG image has no closing IEND chunk", ANALYSIS),
    ("analysis/layer_scores.png", empty, "the file is empty (0 bytes)", ANALYSIS),
    ("analysis/robustness.png", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 a jpeg"),
     "not a PNG image (no PNG signature), overwritten", ANALYSIS),
    ("comparison/comparison.png", truncate, "truncated: the PNG image has no closing IEND chunk", COMPARISON),
    ("accuracy/accuracy.png", empty, "the file is empty (0 bytes)", ACCURACY),
    ("run/finetune.json", truncate, "not valid JSON, truncated or overwritten", None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "damage", "problem", "rebuild"), CASES,
                         ids=[f"{c[0]} {c[2].split(':')[0]}" for c in CASES])  # fmt: skip
def test_a_damaged_input_stops_the_report_before_it_is_written(outputs, tmp_path, name, damage, problem,
                                                              rebuild):  # fmt: skip
    path = tmp_path / name
    damage(path)
    with pytest.raises(DamagedFileError) as error:
        render_study_report(outputs, tmp_path / "report.html")
    assert error.value.path == path and error.value.problem.startswith(problem)
    assert error.value.rebuild == (rebuild or finetune_rebuild(outputs.run))
    assert not (tmp_path / "report.html").exists()


def test_the_rebuild_hints_name_the_stage():
    assert (
        ANALYSIS == "rerun python -m jobs.pipeline with the same config (its analysis stage writes it again)"
    )


def test_a_whole_png_passes(tmp_path):
    assert check_png(png(tmp_path / "a.png"), "r") == tmp_path / "a.png"


def test_the_pipeline_job_exits_2_with_one_line_naming_a_damaged_report_input(outputs, tmp_path, capfd,
                                                                           monkeypatch):  # fmt: skip
    truncate(outputs.analysis / "headline.json")

    def run_study(config, out, uri, logs) -> None:  # the stages done: the report reads their outputs
        render_study_report(outputs, out / "report.html")

    monkeypatch.setattr(pipeline_job, "run_study", run_study)
    with pytest.raises(SystemExit) as exited:
        pipeline_job.main(["--set", f"out={tmp_path / 'study'}"])
    assert exited.value.code == 2
    err = capfd.readouterr().err  # the job's console writes to the terminal's descriptor
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"error: {outputs.analysis / 'headline.json'}: not valid JSON, truncated or ")
    assert line.endswith(f"; to rebuild it: {ANALYSIS}")


@pytest.mark.parametrize("damage", [truncate, empty, lambda p: p.write_text('{"key": 1}')],
                         ids=["truncated", "empty", "no accuracy"])  # fmt: skip
def test_a_damaged_accuracy_cache_is_named_and_recomputed(tmp_path, capsys, damage):
    path, key = tmp_path / "base.json", {"model": "m"}
    assert cached_accuracy(path, key, lambda: {"addsub-100": 0.25}) == {"addsub-100": 0.25}
    damage(path)
    assert cached_accuracy(path, key, lambda: {"addsub-100": 0.5}) == {"addsub-100": 0.5}  # recomputed
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: {path}: ") and line.endswith("; to rebuild it: recomputed now")
    assert json.loads(path.read_text()) == {"key": key, "accuracy": {"addsub-100": 0.5}}  # and rewritten


GROUND_TRUTH_SIMILARITY = pl.DataFrame({
    "step": [0, 100, 200], "node_jaccard_base": [1.0, 0.6, 0.5], "edge_jaccard_base": [1.0, 0.2, 0.125],
    "truth_pearson": [0.75, 0.5, 0.25], "truth_spearman": [0.5, 0.5, 0.25],
    "truth_abs_spearman": [0.875, 0.75, 0.5], "truth_top_overlap": [0.5, 0.25, 0.0],
    "exact_node_jaccard_base": [1.0, 0.75, 0.625], "exact_edge_jaccard_base": [1.0, 0.25, 0.125],
})  # fmt: skip
"""The analysis' similarity table with the ground-truth columns (``analysis --set ground_truth=true``)."""


def test_the_report_states_the_agreement_and_the_verdict(outputs, tmp_path):
    GROUND_TRUTH_SIMILARITY.write_parquet(outputs.analysis / "similarity.parquet")
    headline = json.loads((outputs.analysis / "headline.json").read_text())
    headline |= ground_truth_headline(GROUND_TRUTH_SIMILARITY)
    section = ground_truth_section(outputs, headline)
    assert section.title == GROUND_TRUTH_TITLE
    assert (
        "Pearson 0.750 -> 0.250; Spearman 0.500 -> 0.250; Spearman of |score| 0.875 -> 0.500; top-5% "
        "overlap 0.500 -> 0.000"
    ) in section.text
    assert "node Jaccard 0.625, edge Jaccard 0.125" in section.text
    assert "the exact circuits keep their nodes and rewire their edges too" in section.text
    assert [figure.path.name for figure in section.figures] == ["ground_truth.png"]
    (outputs.analysis / "headline.json").write_text(json.dumps(headline))
    png(outputs.analysis / "ground_truth.png")
    report = render_study_report(outputs, tmp_path / "report.html")
    assert report.read_text().count("<img") == len(ANALYSIS_FIGURES) + 3  # and the ground truth's


def test_the_report_without_ground_truth_says_so(outputs):
    headline = json.loads((outputs.analysis / "headline.json").read_text())
    section = ground_truth_section(outputs, headline)
    assert section == not_computed(GROUND_TRUTH_TITLE, "circuits.ground_truth=false")
