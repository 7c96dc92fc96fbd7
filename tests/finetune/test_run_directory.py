"""A run directory holds one run: the same config resumes, another config is refused before work."""

from __future__ import annotations

import json

import pytest

from ftcircuits.config.loading import load_config
from ftcircuits.finetune.run_identity import check_run_directory, run_record
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.run_layout import RUN_CONFIG_FILE


def test_another_config_in_the_same_out_is_refused_naming_the_fields(tmp_path):
    config = load_config(FinetuneConfig, None, [f"out={tmp_path}"])
    record = run_record(config, tmp_path / "data")
    check_run_directory(record)  # nothing there yet
    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps(record | {"mlflow_run": "abc"}))
    check_run_directory(run_record(config, tmp_path / "data"))  # the same run: resumes
    changed = config.model_copy(update={"method": config.method.model_copy(update={"r": 4})})
    with pytest.raises(ValueError, match=r"another config \(method.r differ\)"):
        check_run_directory(run_record(changed, tmp_path / "data"))
