"""MLflow params: nested configs flatten to dotted names; regex-keyed mappings stay one JSON param."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from ftcircuits.tracking.mlflow_runs import create_run, flat_params

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
