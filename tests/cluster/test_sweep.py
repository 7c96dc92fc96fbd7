"""The CircuitLoRA sweep on a real local Ray: 2 trials, MLflow child runs under one parent, a resume
after the sweep is stopped partway, and bad search spaces refused before any trial."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import polars as pl
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray import tune

from ftcircuits.cluster.sweep import EXPERIMENT, TUNE_DIR
from ftcircuits.cluster.sweep_tracking import stopped_early
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.config.sweep import SweepConfig
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.run_layout import checkpoint_name, index_path
from ftcircuits.tracking.mlflow_runs import tracking_uri
from tuning import sweep


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture()
def sweep_config(tmp_path, tiny_run) -> Path:
    """A 2-trial sweep over the tiny run (the reference run): matched to LoRA r=4, 8 steps a trial, 1 worker
    each."""
    preset = write_yaml(tmp_path / "preset.yaml", {
        "model": str(tiny_run / "base"), "task": {"name": "addsub", "range": 100},
        "method": {"name": "lora", "r": 4}, "scaling": {"workers": 1, "cpus_per_worker": 1},
        "train": {"epochs": 1, "micro_batch_size": 16, "grad_accumulation": 1, "warmup_steps": 1,
                  "checkpoint_every": 2, "lr": 0.01},
        "eval_batch_size": 64, "out": str(tmp_path / "unused"),
    })  # fmt: skip
    return write_yaml(tmp_path / "sweep.yaml", {
        "reference_run": str(tiny_run), "finetune_config": str(preset), "lora_r": 4,
        "circuits": {"discovery": {"examples": 16, "batch_size": 8}},
        "space": {"variant": ["source", "destination"], "k": [1], "ratio": [2.0, 3.0]},
        "trials": 2, "workers_per_trial": 1, "grace_checkpoints": 1, "out": str(tmp_path / "sweep"),
    })  # fmt: skip


class StopAfterFirstTrial(tune.Callback):
    """Interrupt the sweep (SIGINT to the driver, as Ctrl-C would) once, after the first trial ends."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.ray
@pytest.mark.slow
def test_a_stopped_sweep_resumes_and_logs_child_runs_under_one_parent(tmp_path, ray_cluster, sweep_config):
    out = tmp_path / "sweep"
    sweep.main(["--config", str(sweep_config)], callbacks=[StopAfterFirstTrial(tmp_path / "stopped")])
    assert (tmp_path / "stopped").exists() and tune.Tuner.can_restore(out / TUNE_DIR / EXPERIMENT)
    interrupted = pl.read_parquet(out / "trials.parquet")
    assert interrupted.height <= 2

    sweep.main(["--config", str(sweep_config)])  # restores the interrupted sweep and finishes it
    trials = pl.read_parquet(out / "trials.parquet")
    assert trials.height == 2 and trials["error"].is_null().all()
    assert trials["trial_id"].n_unique() == 2
    assert (trials["params"] <= trials["matched_params"]).all()
    assert (trials["params"] >= 0.95 * trials["matched_params"]).all()
    finished = trials.filter(~pl.col("stopped_early"))
    assert finished.height >= 1 and finished["last_step"].to_list() == [8] * finished.height

    client = MlflowClient(tracking_uri(out))
    (experiment,) = [e for e in client.search_experiments() if e.name == "circuitlora-sweep"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2  # the resume logged into the same child runs
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.data.tags["trial_id"] for r in children} == set(trials["trial_id"].to_list())
    for run in children:
        early = trials.filter(pl.col("trial_id") == run.data.tags["trial_id"])["stopped_early"][0]
        assert run.data.tags["stopped_early"] == str(early).lower()
        assert run.info.status == ("KILLED" if early else "FINISHED")

    best = load_config(FinetuneConfig, out / "best.yaml")  # what jobs.finetune runs as it is
    assert best.method.rank_pattern and best.train.lr_groups and best.out == out / "best-run"


def test_stopped_early_is_read_from_the_trials_index(tmp_path):
    def trial(name: str, steps: list[int], total: int) -> Path:
        index = index_path(tmp_path / name)
        index.parent.mkdir(parents=True)
        pl.DataFrame({"step": steps, "path": [str(index.parent / checkpoint_name(s)) for s in steps],
                      "train_loss": 0.0, "eval_accuracy": 0.0,
                      "total_steps": [total] * len(steps)}).write_parquet(index)  # fmt: skip
        return tmp_path / name

    assert stopped_early(trial("stopped", [0, 2, 4], 8)) is True
    assert stopped_early(trial("ran-to-its-end", [0, 4, 8], 8)) is False  # even if ASHA stopped it at 8
    assert stopped_early(tmp_path / "never-started") is True


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr_critical": {"low": 0.01, "high": 0.001}}, "empty or inverted search range"),
        ({"lr_other": {"low": 0.01, "high": 0.01}}, "empty or inverted search range"),
        (
            {"ranks": "search", "r_other": {"low": 0, "high": 4}, "r_critical": {"low": 2, "high": 8}},
            "greater than or equal to 1",
        ),
        ({"variant": ["source", "everywhere"]}, "space.variant"),
        ({"k": []}, "empty choice list"),
    ],
)
def test_bad_search_spaces_are_refused_by_the_config(space, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SweepConfig, None, [f"space={space}"])


def test_a_k_too_deep_or_unmatchable_ranks_are_refused_before_any_trial(sweep_config, capsys):
    with pytest.raises(SystemExit, match="space.k \\[2\\] must be below the model's 2 layers"):
        sweep.main(["--config", str(sweep_config), "--set", "space.k=[2]"])
    with pytest.raises(SystemExit, match="no \\(r_o, r_c\\) .* matches uniform LoRA r=1"):
        sweep.main(["--config", str(sweep_config), "--set", "lora_r=1"])
