"""MLflow: nested configs flatten to dotted params (regex-keyed mappings stay one JSON param); experiments
are model-training ones, runs carry their role, datasets are runs' inputs; the UI's paths."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from ftcircuits.tracking.mlflow_runs import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    ROLE_TAG,
    RunLogger,
    create_run,
    flat_params,
    ui_path,
)

RANK_PATTERN = {r"gpt_neox\.layers\.0\.attention\.dense": 42}
LR_GROUPS = {r"(?:^|\.)(?:gpt_neox\.layers\.0)\..*\.lora_[AB]\.": 0.01}


def test_nested_sections_flatten_and_regex_keys_stay_json():
    params = flat_params(
        {"train": {"lr": 0.005, "lr_groups": LR_GROUPS}, "method": {"rank_pattern": RANK_PATTERN}}
    )
    assert params == {
        "train.lr": "0.005",
        "train.lr_groups": json.dumps(LR_GROUPS),
        "method.rank_pattern": json.dumps(RANK_PATTERN),
    }


@pytest.mark.slow  # a new SQLite MLflow store: SQLAlchemy, Alembic and the schema's migrations take seconds
def test_a_run_with_regex_keyed_params_is_created_in_a_real_store(tmp_path):
    uri, run_id = create_run(tmp_path, "circuitlora", "t", {"method": {"rank_pattern": RANK_PATTERN}})
    logged = MlflowClient(uri).get_run(run_id).data.params
    assert json.loads(logged["method.rank_pattern"]) == RANK_PATTERN


def test_a_tracking_server_keeps_artifacts_in_its_own_store_a_local_one_under_out(tmp_path):
    from ftcircuits.tracking.mlflow_runs import artifact_location

    assert artifact_location("http://127.0.0.1:5000", tmp_path / "run") is None
    assert artifact_location(f"sqlite:///{tmp_path}/run/mlflow.db", tmp_path / "run") == (
        f"file://{tmp_path}/run/mlartifacts"
    )


def test_every_experiment_is_a_model_training_one_and_every_run_has_its_role(mlflow_out):
    uri, run_id = create_run(mlflow_out, "finetune", "seed-0", {"train": {"lr": 0.005}}, "finetune")
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert (
        client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    )
    assert run.data.tags[ROLE_TAG] == "finetune" and run.data.params == {"train.lr": "0.005"}
    _, other = create_run(mlflow_out, "circuitlora", "r", {}, tags={"task": "addsub-100"})
    assert {k: v for k, v in client.get_run(other).data.tags.items() if not k.startswith("mlflow.")} == {
        "role": "circuitlora", "task": "addsub-100"}  # fmt: skip
    assert (
        client.get_experiment_by_name("circuitlora").artifact_location
        == (mlflow_out / "mlartifacts").as_uri()
    )


def test_an_experiment_made_before_the_tag_gets_it(mlflow_out):
    client = MlflowClient(f"sqlite:///{mlflow_out / 'mlflow.db'}")
    old = client.create_experiment("analysis")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    _, run_id = create_run(mlflow_out, "analysis", "seed-0-analysis", {}, "analysis")
    assert client.get_run(run_id).info.experiment_id == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING


def test_a_dataset_is_the_runs_input_named_and_hashed(mlflow_out):
    uri, run_id = create_run(mlflow_out, "finetune", "seed-0", {}, "finetune")
    digest = "ab" * 32
    manifest = {"content_hash": digest, "summary": {"items": 80, "splits": {"finetune": 64, "circuit": 16}}}
    RunLogger(uri, run_id).dataset(mlflow_out / "data" / "addsub-100", manifest)
    RunLogger(uri, run_id).param("trainable_params", 1234)
    run = MlflowClient(uri).get_run(run_id)
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.name == "addsub-100" and logged.dataset.digest == digest[:36]
    assert logged.dataset.source_type == "local"
    assert json.loads(logged.dataset.source) == {"uri": (mlflow_out / "data" / "addsub-100").as_uri()}
    assert json.loads(logged.dataset.profile) == {"content_hash": digest, "items": 80,
                                                  "splits": {"finetune": 64, "circuit": 16}}  # fmt: skip
    assert [(tag.key, tag.value) for tag in logged.tags] == [("mlflow.data.context", "training")]
    assert run.data.params["trainable_params"] == "1234"


def test_the_ui_path_opens_an_experiments_runs_in_the_model_training_view():
    assert ui_path("4") == "/#/experiments/4/runs?workflowType=machine_learning"
    assert ui_path("4", "methods", charts=True) == (
        "/#/experiments/4/runs?workflowType=machine_learning&viewStateShareKey=methods&compareRunsMode=CHART"
    )
