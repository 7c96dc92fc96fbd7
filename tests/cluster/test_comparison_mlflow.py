"""The comparison in MLflow, without Ray: a parent run per task with each method's mean and std accuracy and
the comparison's files, a child run per (method, seed) with its dataset, method and trainable parameters,
and the experiment's shared runs view that lists the children flat."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from ftcircuits.cluster.comparison_trials import COMPARE_VIEW, ComparisonRuns
from ftcircuits.study.comparison import comparison_summary, comparison_table
from ftcircuits.tasks.io import write_dataset
from ftcircuits.tracking.mlflow_runs import SHARED_VIEW_TAG
from tests.study.test_comparison import compared

ITEMS = pl.DataFrame({"prompt": ["1+1=", "2-1="], "answer": ["2", "1"], "split": ["finetune", "circuit"]})


def comparison_runs(mlflow_out):
    runs = [
        compared(mlflow_out, "addsub-100", "lora", 0, [0.0, 0.6, 0.7], 200),
        compared(mlflow_out, "addsub-100", "lora", 1, [0.0, 0.9], 200),
        compared(mlflow_out, "addsub-100", "circuitlora-matched", 0, [0.0, 0.5], 180),
    ]
    data = write_dataset(
        mlflow_out / "data" / "addsub-100", ITEMS, {"task": "addsub", "summary": {"items": 2}}
    )
    tracking = ComparisonRuns(mlflow_out, {run.key: run for run in runs}, {"addsub-100": data})
    for run in runs:
        tracking.log_run(run)
    return runs, tracking, data


def children(client: MlflowClient, tracking: ComparisonRuns) -> dict:
    found = client.search_runs([tracking.experiment_id], "tags.role = 'comparison-run'")
    return {run.info.run_name: run for run in found}


def test_each_child_logs_its_dataset_method_and_trainable_params(mlflow_out):
    runs, tracking, data = comparison_runs(mlflow_out)
    client = MlflowClient(tracking.uri)
    logged = children(client, tracking)
    assert sorted(logged) == ["circuitlora-matched-seed-0", "lora-seed-0", "lora-seed-1"]
    child = logged["circuitlora-matched-seed-0"]
    parent = tracking.ids["addsub-100"]
    assert child.data.tags["mlflow.parentRunId"] == parent
    tags = {k: child.data.tags[k] for k in ("role", "task", "method", "seed")}
    assert tags == {
        "role": "comparison-run",
        "task": "addsub-100",
        "method": "circuitlora-matched",
        "seed": "0",
    }
    assert child.data.params["trainable_params"] == "180"
    assert child.data.params["train.seed"] == "0"  # the run's config, flattened
    (dataset,) = child.inputs.dataset_inputs
    manifest = json.loads((data / "manifest.json").read_text())
    assert (dataset.dataset.name, dataset.dataset.digest) == ("addsub-100", manifest["content_hash"][:36])
    assert json.loads(dataset.dataset.profile)["content_hash"] == manifest["content_hash"]
    history = client.get_metric_history(logged["lora-seed-0"].info.run_id, "eval_accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (100, 0.6), (200, 0.7)]
    tracking.log_run(runs[0])  # logged once
    assert len(children(client, tracking)) == 3


def test_the_parent_logs_each_methods_mean_and_std_and_the_comparisons_files(mlflow_out):
    runs, tracking, _ = comparison_runs(mlflow_out)
    for name in ("comparison.md", "comparison.png", "comparison.parquet"):
        (mlflow_out / name).write_text(name)
    tracking.log_summary(comparison_summary(comparison_table(runs)), mlflow_out)
    client = MlflowClient(tracking.uri)
    parent = client.get_run(tracking.ids["addsub-100"])
    assert parent.info.run_name == "addsub-100" and parent.data.tags["role"] == "comparison"
    metrics = parent.data.metrics
    assert set(metrics) == {"accuracy_mean/lora", "accuracy_std/lora", "accuracy_mean/circuitlora-matched"}
    assert metrics["accuracy_mean/lora"] == pytest.approx(0.8)
    assert metrics["accuracy_std/lora"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.7, 0.9
    assert metrics["accuracy_mean/circuitlora-matched"] == 0.5  # one seed: no std
    artifacts = sorted(a.path for a in client.list_artifacts(parent.info.run_id))
    assert artifacts == ["comparison.md", "comparison.parquet", "comparison.png"]


def test_the_experiment_keeps_a_runs_view_of_the_children_and_is_a_model_training_one(mlflow_out):
    _, tracking, _ = comparison_runs(mlflow_out)
    experiment = MlflowClient(tracking.uri).get_experiment(tracking.experiment_id)
    assert experiment.name == "compare-methods"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(experiment.tags[SHARED_VIEW_TAG + "methods"]) == COMPARE_VIEW
    assert COMPARE_VIEW["searchFilter"] == "tags.role = 'comparison-run'"
    runs = f"/#/experiments/{tracking.experiment_id}/runs"
    assert (
        tracking.ui_path()
        == f"{runs}?workflowType=machine_learning&viewStateShareKey=methods&compareRunsMode=CHART"
    )
