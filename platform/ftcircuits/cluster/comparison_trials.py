"""The comparison's runs as Tune trials: a grid over (task, method, seed), concurrency from the cluster.

Each trial fits one TorchTrainer (a finished run is reused, not retrained) and reports its held-out
accuracy per checkpoint through ``TuneReportCallback``. MLflow is written by the Tune driver only
(SQLite takes one writer): one parent run per task, a child run per (method, seed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from ftcircuits.cluster.connection import check_shared_outputs
from ftcircuits.cluster.train import finetune_trainer, record_run
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import read_checkpoint_index, run_finished
from ftcircuits.study.comparison import ComparedRun
from ftcircuits.tracking.mlflow_runs import create_run, flat_params, tracking_uri

RUNS_FILE = "mlflow_runs.json"  # MLflow run ids: each task's parent, each finished run's child
TRIAL_DRIVER = {"CPU": 0, "memory": 1}  # the trial only drives its trainer, whose workers hold the CPUs


def fit_compared(params: dict, runs: dict[str, ComparedRun], data_dirs: dict[str, Path]) -> dict:
    """The Tune trainable: fit the run ``params["run"]`` unless it already finished; return its end."""
    run = runs[params["run"]]
    data_dir = data_dirs[run.task]
    if not run_finished(run.config.out):
        record_run(run.config, data_dir, None)
        callbacks = [TuneReportCallback()]
        result = finetune_trainer(run.config, data_dir, None, max_failures=1, callbacks=callbacks).fit()
        if result.error is not None:
            raise RuntimeError(f"run {run.key} failed: {result.error}")
    last = read_checkpoint_index(run.config.out).row(-1, named=True)
    return {"step": last["step"], "eval_accuracy": last["eval_accuracy"], "finished": True}


class ComparisonRuns(tune.Callback):
    """Logs each finished run as an MLflow child run under its task's parent run, once."""

    def __init__(self, out: Path, runs: dict[str, ComparedRun], tasks: list[str]) -> None:
        self.out, self.runs, self.path = Path(out), runs, Path(out) / RUNS_FILE
        self.uri = tracking_uri(self.out)
        self.ids: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        for task in tasks:
            if task not in self.ids:
                _, self.ids[task] = create_run(self.out, "compare-methods", task, {"task": task})
                MlflowClient(self.uri).set_terminated(self.ids[task])
        self._save()

    def _save(self) -> None:
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps(self.ids, indent=1))

    def log_run(self, run: ComparedRun) -> None:
        """Log a finished run (its config, size and accuracy per checkpoint) unless already logged."""
        if run.key in self.ids:
            return
        client = MlflowClient(self.uri)
        parent = self.ids[run.task]
        tags = {"mlflow.parentRunId": parent, "task": run.task, "method": run.method, "seed": str(run.seed)}
        experiment = client.get_run(parent).info.experiment_id
        child = client.create_run(experiment, run_name=f"{run.method}-seed-{run.seed}", tags=tags).info.run_id
        for key, value in flat_params(run.config.model_dump(mode="json")).items():
            client.log_param(child, key, value)
        index = read_checkpoint_index(run.config.out)
        for step, accuracy in index.select("step", "eval_accuracy").iter_rows():
            client.log_metric(child, "eval_accuracy", accuracy, step=step)
        last = index.row(-1, named=True)
        client.log_metric(child, "trainable_params", last["trainable_params"], step=last["step"])
        client.log_metric(child, "param_share", last["trainable_params"] / last["model_params"], last["step"])
        client.set_terminated(child, "FINISHED")
        self.ids[run.key] = child
        self._save()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run = self.runs[trial.config["run"]]
        if run_finished(run.config.out):
            self.log_run(run)


TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


def run_comparison(
    runs: list[ComparedRun], data_dirs: dict[str, Path], out: Path, callbacks: list
) -> tune.ResultGrid:
    """Fit every run as a Tune trial, as many at a time as the cluster's CPUs hold; return Tune's results.

    Ctrl-C is a KeyboardInterrupt here, not Tune's graceful stop (which returns the unfinished trials as
    results): every run resumes on its own when the comparison runs again, not through Tune's state.
    """
    check_shared_outputs(out, *(run.config.out for run in runs))
    by_key = {run.key: run for run in runs}
    per_run = max(run.config.scaling.workers * run.config.scaling.cpus_per_worker for run in runs)
    concurrency = max(1, int(ray.cluster_resources().get("CPU", 1) // per_run))
    trainable = tune.with_resources(
        tune.with_parameters(fit_compared, runs=by_key, data_dirs=data_dirs), TRIAL_DRIVER
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search(list(by_key))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(
            name="compare", storage_path=str(Path(out).resolve() / "tune"), callbacks=callbacks
        ),
    )
    given = os.environ.get(TUNE_SIGINT_ENV)
    os.environ[TUNE_SIGINT_ENV] = "1"
    try:
        return tuner.fit()
    finally:
        if given is None:
            os.environ.pop(TUNE_SIGINT_ENV)
        else:
            os.environ[TUNE_SIGINT_ENV] = given
