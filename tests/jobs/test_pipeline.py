"""jobs.pipeline end to end on a real local Ray with a small model: every stage's outputs, one MLflow store,
a rerun that redoes nothing, the report rendering in headless Chromium with every figure loaded, and the
MLflow UI over the store listing and charting the comparison's runs."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from pathlib import Path

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from ftcircuits.cluster.comparison_trials import VIEW_KEY
from ftcircuits.report.screenshot import INSTALL_HINT, dump_dom, find_chromium
from ftcircuits.run_layout import index_path
from ftcircuits.tracking.mlflow_runs import EXPERIMENT_KIND_TAG, MODEL_TRAINING, ui_path
from ftcircuits.tracking.mlflow_ui import serve_ui
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


def page_text(dom: str) -> str:
    """The page's text: styles dropped, every tag a space, spaces collapsed."""
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<style[^>]*>.*?</style>", "", dom, flags=re.S))
    return re.sub(r"\s+", " ", text)


@pytest.mark.ray
@pytest.mark.slow
def test_the_mlflow_ui_lists_and_charts_the_comparisons_runs(study):
    """``mlflow server`` over the pipeline's store, its UI in headless Chromium: the compare experiment's
    runs view (the shared view the comparison keeps) lists every child run flat with its eval_accuracy,
    and its chart view charts eval_accuracy; every experiment opens as a model-training one."""
    if find_chromium() is None:
        pytest.skip(INSTALL_HINT)
    out = study[0]
    client = MlflowClient(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    kinds = {e.name: e.tags.get(EXPERIMENT_KIND_TAG) for e in client.search_experiments()}
    assert {kinds[name] for name in ("finetune", "circuits", "analysis", "compare-methods")} == {
        MODEL_TRAINING
    }
    (compare,) = [e for e in client.search_experiments() if e.name == "compare-methods"]
    children = client.search_runs([compare.experiment_id], "tags.role = 'comparison-run'")
    names = sorted(run.info.run_name for run in children)
    assert names == ["circuitlora-seed-0", "lora-seed-0"]
    with serve_ui(out / "mlflow.db") as url:
        page = {"width": 1600, "height": 1000, "budget_ms": 30_000, "timeout": 600}  # a busy machine is slow
        table = dump_dom(url + ui_path(compare.experiment_id, VIEW_KEY), **page)
        charts = dump_dom(url + ui_path(compare.experiment_id, VIEW_KEY, charts=True), **page)
    for dom in (table, charts):
        assert all(f">{name}<" in dom for name in names), names
        assert "eval_accuracy" in dom
        assert "2 matching runs" in page_text(dom)  # the children, flat; not the parent
    for run in children:  # the table's eval_accuracy column: each run's last value, as the UI rounds it
        shown = math.floor(1000 * run.data.metrics["eval_accuracy"] + 0.5) / 1000  # 3 decimals, as in JS
        assert f'class="ag-cell-value">{shown:g}<' in table
    assert "Model metrics (1)" in page_text(charts)  # one chart: eval_accuracy per checkpoint
