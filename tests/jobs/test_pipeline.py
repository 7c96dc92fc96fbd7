"""jobs.pipeline end to end on a real local Ray with a small model: every stage's outputs, one MLflow store,
a rerun that redoes nothing, and the report rendering in headless Chromium with every figure loaded."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from ftcircuits.report.screenshot import INSTALL_HINT, dump_dom, find_chromium
from ftcircuits.run_layout import index_path
from jobs import pipeline
from tests.conftest import circuit_settings, small_pipeline_args


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_run, ray_cluster, monkeypatch_module) -> tuple[Path, str, list[str]]:
    """Run the pipeline once (LoRA and CircuitLoRA, 5 steps each); return (out, stdout, its argv)."""
    root = tmp_path_factory.mktemp("pipeline")
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    circuits = circuit_settings(16, 8, baselines=["permuted"])
    argv = small_pipeline_args(root, tiny_run / "base", str(root / "study"), circuits)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        pipeline.main(argv)
    return root / "study", stdout.getvalue(), argv


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.ray
@pytest.mark.slow
def test_the_pipeline_writes_every_stage_and_one_mlflow_store(study):
    out, stdout, _ = study
    assert "MLFLOW_TRACKING_URI" not in os.environ  # set for the stages only
    run = out / "comparison" / "addsub-100" / "lora" / "seed-0"
    assert pl.read_parquet(index_path(run))["step"].to_list() == [0, 2, 4, 5]  # 80 items / 16, one epoch
    table = pl.read_parquet(out / "comparison" / "comparison.parquet")
    assert table.select("method", "seed").sort("method").rows() == [("circuitlora", 0), ("lora", 0)]
    report = out / "report.html"
    html = report.read_text()
    for title in ("Accuracy before and after fine-tuning", "Circuit similarity over fine-tuning steps",
                  "Faithfulness against budget", "Robustness to perturbed inputs",
                  "Where the edges change: critical layers", "CircuitLoRA against LoRA"):  # fmt: skip
        assert f">{title}<" in html
    assert html.count("data:image/png;base64,") == 8
    assert "lora_r: 4" in html or "lora_r&quot;: 4" in html or "'lora_r': 4" in html  # the exact configs

    uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    assert f"MLflow: mlflow ui --backend-store-uri {uri}" in stdout
    assert f"report: {report.resolve()}" in stdout
    experiments = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {"finetune", "circuits", "analysis", "compare-methods"} <= experiments  # every stage, one store
    assert not (run / "mlflow.db").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_a_rerun_redoes_nothing(study):
    out, _, argv = study
    # checkpoints, indexes, circuits stay; tables rebuilt from them (summaries, analysis, comparison) may not
    rebuilt = ("summary.parquet", "comparison.parquet")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".parquet", ".safetensors")
              and "analysis" not in p.parts and p.name not in rebuilt}  # fmt: skip
    uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    client = MlflowClient(uri)
    (finetune,) = [e for e in client.search_experiments() if e.name == "finetune"]
    runs = len(client.search_runs([finetune.experiment_id]))
    pipeline.main(argv)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(client.search_runs([finetune.experiment_id])) == runs


@pytest.mark.ray
@pytest.mark.slow
def test_the_report_renders_in_headless_chromium_with_every_figure(study):
    if find_chromium() is None:
        pytest.skip(INSTALL_HINT)
    dom = dump_dom(study[0] / "report.html", width=1200)
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-figures="8"' in body and 'data-images-loaded="8"' in body
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    assert len(widths) == 8 and min(widths) > 0
