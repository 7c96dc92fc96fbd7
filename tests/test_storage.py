"""Where runs are stored: relative run paths under FTCIRCUITS_STORAGE, and no relative out in Ray's copy of
a submitted working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcircuits.config.benchmarks import BenchCircuitsConfig
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.storage import STORAGE_ENV, StorageError, ray_working_dir_copy, resolve_run_path
from ftcircuits.tracking.mlflow_runs import tracking_uri
from jobs import finetune

PRESET = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "finetune-tiny-short.yaml"
RAY_COPY = "ray/session_2026_1/runtime_resources/working_dir_files/_ray_pkg_5e1f"


@pytest.fixture()
def ray_copy(tmp_path, monkeypatch) -> Path:
    """The current directory is Ray's unpacked copy of a submitted working directory."""
    copy = tmp_path / RAY_COPY
    (copy / "jobs").mkdir(parents=True)
    monkeypatch.chdir(copy / "jobs")
    return copy


def test_relative_run_paths_resolve_under_the_storage_root(tmp_path, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert resolve_run_path("runs/a") == Path("runs/a")
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path))
    assert resolve_run_path("runs/a") == tmp_path / "runs/a" and resolve_run_path("/x/a") == Path("/x/a")
    monkeypatch.setenv(STORAGE_ENV, "shared")
    with pytest.raises(StorageError, match=r"^FTCIRCUITS_STORAGE='shared' must be an absolute path"):
        resolve_run_path("runs/a")


def test_every_config_loaded_stores_its_runs_under_the_storage_root(tmp_path, monkeypatch):
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path))
    assert load_config(FinetuneConfig).out == tmp_path / "runs/finetune"  # the default
    assert load_config(FinetuneConfig, PRESET).out == tmp_path / "runs/finetune-tiny-short"  # a preset
    assert load_config(FinetuneConfig, None, ["out=/abs/run"]).out == Path("/abs/run")
    assert load_config(BenchCircuitsConfig).run == tmp_path / "runs/finetune-tiny"  # a run it reads
    out = load_config(FinetuneConfig, None, ["out=runs/x"]).out
    assert tracking_uri(out) == f"sqlite:///{tmp_path}/runs/x/mlflow.db"  # MLflow follows out


def test_ray_working_dir_copy_is_recognised(tmp_path, ray_copy):
    assert ray_working_dir_copy() == ray_copy
    assert ray_working_dir_copy(tmp_path / "ray" / "session_2026_1") is None


def test_a_relative_out_in_rays_copy_is_refused_before_any_work(tmp_path, monkeypatch, capsys, ray_copy):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    with pytest.raises(SystemExit) as exit:
        finetune.main(["--config", str(PRESET)])
    assert exit.value.code == 2
    assert capsys.readouterr().err == (
        f"error: out 'runs/finetune-tiny-short' is relative and this job runs in Ray's copy of the working "
        f"directory ({ray_copy}); its results would be lost with the cluster: set "
        "FTCIRCUITS_STORAGE=/shared/path or give an absolute out\n"
    )
    assert list(ray_copy.rglob("*")) == [ray_copy / "jobs"]  # nothing written
    assert load_config(FinetuneConfig, PRESET, [f"out={tmp_path}/run"]).out == tmp_path / "run"
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path / "storage"))
    assert load_config(FinetuneConfig, PRESET).out == tmp_path / "storage/runs/finetune-tiny-short"
    with pytest.raises(ConfigError, match=r"^out 'runs/x' is relative"):
        monkeypatch.delenv(STORAGE_ENV)
        load_config(FinetuneConfig, None, ["out=runs/x"])
