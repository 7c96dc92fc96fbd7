"""jobs.pipeline end to end on a real local Ray with a small model, run as a person runs it (a subprocess
with a local Ray of its own): every stage's outputs, one MLflow store, a quiet console (stages, bars and
results; everything else in ``<out>/logs``), a rerun that redoes nothing, and the report rendering in
headless Chromium with every figure loaded, and the MLflow UI over the store listing and charting the
comparison's runs."""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from ftcircuits.circuits.io import read_circuit
from ftcircuits.cluster.comparison_trials import VIEW_KEY
from ftcircuits.report.browser import open_page
from ftcircuits.report.screenshot import INSTALL_HINT, dump_dom, find_chromium
from ftcircuits.run_layout import index_path
from ftcircuits.study.explorer import EXPLORER_FILE
from ftcircuits.tracking.mlflow_runs import EXPERIMENT_KIND_TAG, MODEL_TRAINING, ui_path
from ftcircuits.tracking.mlflow_ui import serve_ui
from jobs import pipeline
from jobs.console import DRIVER_LOG, LOGS_DIR, RAY_LOGS_DIR
from tests.conftest import RAY_ENVIRONMENT, circuit_settings, small_pipeline_args

REPOSITORY = Path(__file__).resolve().parents[2]
NOISE = (
    "╭", "╰", "├", "Trial status", "Current time:", "Logical resource usage", "Trial fit_compared",
    "View detailed results here", "tensorboard --logdir", "(pid=", "RayTrainWorker", "TrainController",
    "CircuitActor", "(raylet", "Started a local Ray instance", "Token authentication", "INFO", "WARNING",
    "FutureWarning", "warnings.warn", "core_worker.cc", "PreemptionWatcher", "PYTHON worker processes",
    "Setting accelerator to CPU", "deepspeed_shm_comm_op", "alembic", "mlflow.store.db.utils",
    "Loading weights", "Writing model shards", "\x1b[36m",
)  # fmt: skip
"""What the console of ``python -m jobs.pipeline`` printed before it was made quiet (issue 19): Ray Tune's
trial tables and trial lines, Ray's worker lines (prefixed with actor and pid) and its own INFO and
warnings, transformers' deprecation and bars, DeepSpeed's and MLflow's logs."""
MAX_CONSOLE_LINES = 120
"""The issue's bound for the default pipeline's console (115 lines on a cached rerun of the full default,
about 119 fresh); the small pipeline's comes to about 90 (before this console: 354)."""


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_run, monkeypatch_module) -> tuple[Path, str, list[str]]:
    """Run the pipeline once as a person does (LoRA and CircuitLoRA, 5 steps each): ``python -m
    jobs.pipeline`` in a subprocess that starts a local Ray of its own (in a short temporary directory,
    with its own auth token), stdout and stderr together; return (out, the console's text, its argv)."""
    root = tmp_path_factory.mktemp("pipeline")
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    circuits = circuit_settings(16, 8, baselines=["permuted"])
    argv = small_pipeline_args(root, tiny_run / "base", str(root / "study"), circuits)
    temp = Path(tempfile.mkdtemp(prefix="pl", dir="/tmp"))  # Ray's unix sockets allow ~107 characters
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENVIRONMENT}
    env |= {"RAY_TMPDIR": str(temp), "RAY_AUTH_TOKEN_PATH": str(token)}
    try:
        command = [sys.executable, "-m", "jobs.pipeline", *argv]
        done = subprocess.run(command, cwd=REPOSITORY, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=1800)  # fmt: skip
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-5000:]
    return root / "study", done.stdout, argv


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
                  "Where the edges change: critical layers", "Explore the circuits",
                  "CircuitLoRA against LoRA"):  # fmt: skip
        assert f">{title}<" in html
    assert html.count("data:image/png;base64,") == 8
    assert '<a href="explorer.html">' in html and (out / "explorer.html").is_file()  # on by default
    assert "lora_r: 4" in html or "lora_r&quot;: 4" in html or "'lora_r': 4" in html  # the exact configs

    uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    assert f"MLflow: mlflow ui --backend-store-uri {uri}" in stdout
    assert f"report: {report.resolve()}" in stdout
    experiments = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {"finetune", "circuits", "analysis", "compare-methods"} <= experiments  # every stage, one store
    assert not (run / "mlflow.db").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_the_console_shows_stages_progress_and_results_and_the_logs_hold_the_rest(study):
    out, console, _ = study
    lines = console.splitlines()
    noisy = [line for line in lines if any(pattern in line for pattern in NOISE)]
    assert not noisy, "\n".join(noisy[:20])
    assert len(lines) <= MAX_CONSOLE_LINES, console
    for header in ("== data and base accuracy", "== fine-tuning lora", "== circuits of every checkpoint (and",
                   "== circuit dynamics", "== CircuitLoRA against LoRA", "== report"):  # fmt: skip
        assert sum(line.startswith(header) for line in lines) == 1, header
    bars = {"fine-tuning": "5/5", "circuits": "12/12", "comparison runs": "2/2",
            "CircuitLoRA's final circuits": "1/1"}  # fmt: skip
    for bar, total in bars.items():  # a bar per long stage (the reference circuits' too), its newest metric
        shown = [line for line in lines if line.startswith(f"{bar}:")]
        assert any(f"100%|##########| {total}" in line for line in shown), (bar, shown)
    assert "eval accuracy" in [line for line in lines if line.startswith("comparison runs:")][-1]
    assert "faithfulness" in [line for line in lines if line.startswith("circuits:")][-1]
    assert f"logs (driver and Ray workers): {out.resolve() / LOGS_DIR}" in lines

    driver = (out / LOGS_DIR / DRIVER_LOG).read_text()
    assert "Started a local Ray instance" in driver and "== CircuitLoRA against LoRA" in driver
    workers = [path.read_text() for path in (out / LOGS_DIR / RAY_LOGS_DIR).glob("worker-*.out")]
    assert any("seed-0: step 5" in text for text in workers)  # rank 0's line per checkpoint


@pytest.mark.ray
@pytest.mark.slow
def test_a_rerun_redoes_nothing(study, ray_cluster):
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


@pytest.mark.ray
@pytest.mark.slow
def test_the_explorer_sets_circuitloras_final_circuit_beside_the_base(study, browser_ready):
    """The explorer beside the report, side by side in headless Chromium: the studied LoRA run's base on the
    left, the CircuitLoRA arm's final checkpoint on the right, each drawn with its circuit file's edges."""
    out = study[0]
    compared = out / "comparison" / "addsub-100"
    (analysis,) = (compared / "lora" / "seed-0").glob(f"circuits/*/analysis/{EXPLORER_FILE}")
    base = read_circuit(analysis.parent.parent / "step-000000")[0]
    (final,) = (compared / "circuitlora" / "seed-0").glob("circuits/*/step-000005.json")
    tuned = read_circuit(final.with_name("step-000005"))[0]
    assert (out / EXPLORER_FILE).read_bytes() == analysis.read_bytes()  # the report's copy is the newest
    client = MlflowClient(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    analyses = client.get_experiment_by_name("analysis").experiment_id
    (tracked,) = client.search_runs([analyses], max_results=1)  # the newest (a rerun test adds one)
    logged = client.download_artifacts(tracked.info.run_id, f"analysis/{EXPLORER_FILE}", str(out.parent))
    assert Path(logged).read_bytes() == analysis.read_bytes()  # so is the analysis run's
    view = urlencode({"side": "", "step": "circuitlora, step 5", "reference": "0"})
    with open_page(out / EXPLORER_FILE, fragment=view) as opened:
        page = opened.page
        page.wait_for_function("window.explorer && window.explorer.ready")
        shown = page.locator("#shown option").all_text_contents()
        assert shown == ["step 0", "step 2", "step 4", "step 5", "circuitlora, step 5"]
        assert page.locator("#step-label").text_content() == "circuitlora, step 5"
        assert page.evaluate("explorer.drawnEdgesA") == base["in_circuit"].sum()
        assert page.evaluate("explorer.drawnEdges") == tuned["in_circuit"].sum()
        assert opened.errors == []


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
