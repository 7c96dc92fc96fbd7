"""The comparison's runs as Tune trials: a grid over (task, method, seed), concurrency from the cluster.

Each trial fits one TorchTrainer (a finished run is reused, not retrained) and reports its held-out
accuracy per checkpoint through ``TuneReportCallback``. MLflow is written by the Tune driver only
(SQLite takes one writer): one parent run per task (role ``comparison``), a child run per (method, seed)
(role ``comparison-run``: the method as a tag, the task's dataset as its input, the trainable parameters
as a param); once every run finished, each parent gets its methods' mean and std accuracy and the
comparison's files. The experiment keeps a runs view, ``methods`` (``COMPARE_VIEW``): the child runs flat,
best ``eval_accuracy`` first, charted per checkpoint (``ComparisonRuns.ui_path``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from ftcircuits import console
from ftcircuits.cluster.connection import check_shared_outputs
from ftcircuits.cluster.train import finetune_trainer, record_run
from ftcircuits.console import progress
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import read_checkpoint_index, run_finished
from ftcircuits.study.comparison import ComparedRun
from ftcircuits.tasks.io import read_manifest
from ftcircuits.tracking.mlflow_runs import (
    ROLE_TAG,
    RunLogger,
    create_run,
    flat_params,
    share_view,
    tracking_uri,
    ui_path,
)

COMPARISON_FILES = ("comparison.md", "comparison.png", "comparison.parquet")  # on each task's parent
EXPERIMENT = "compare-methods"
VIEW_KEY = "methods"
COMPARE_VIEW = {  # MLflow's shared view state: every child run, flat, their held-out accuracy charted
    "searchFilter": "tags.role = 'comparison-run'",
    "orderByKey": "metrics.`eval_accuracy`",
    "orderByAsc": False,
    "selectedColumns": ["tags.`method`", "tags.`task`", "metrics.`eval_accuracy`",
                        "params.`trainable_params`", "attributes.`Dataset`"],
    "chartsSearchFilter": "eval_accuracy",
}  # fmt: skip
RUNS_FILE = "mlflow_runs.json"  # MLflow run ids: each task's parent, each finished run's child
TRIAL_DRIVER = {"CPU": 0, "memory": 1}  # the trial only drives its trainer, whose workers hold the CPUs
TUNE_VERBOSITY = {True: 0, False: None}
"""Tune's ``verbose`` under a quiet console (0: no trial table, every 30 s, nor trial lines) and else
(None: Tune's default)."""


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

    def __init__(self, out: Path, runs: dict[str, ComparedRun], data_dirs: dict[str, Path]) -> None:
        self.out, self.runs, self.path = Path(out), runs, Path(out) / RUNS_FILE
        self.uri, self.data_dirs = tracking_uri(self.out), data_dirs
        self.ids: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        for task in data_dirs:
            if task not in self.ids:
                _, self.ids[task] = create_run(self.out, EXPERIMENT, task, {"task": task}, "comparison")
                MlflowClient(self.uri).set_terminated(self.ids[task])
        self._save()
        client = MlflowClient(self.uri)
        self.experiment_id = client.get_run(next(iter(self.ids.values()))).info.experiment_id
        share_view(client, self.experiment_id, VIEW_KEY, COMPARE_VIEW)

    def ui_path(self) -> str:
        """The MLflow UI's path of the comparison: every child run, charted."""
        return ui_path(self.experiment_id, VIEW_KEY, charts=True)

    def _save(self) -> None:
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps(self.ids, indent=1))

    def log_run(self, run: ComparedRun) -> None:
        """Log a finished run (config, dataset, size, accuracy per checkpoint) unless already logged."""
        if run.key in self.ids:
            return
        client = MlflowClient(self.uri)
        parent = self.ids[run.task]
        tags = {"mlflow.parentRunId": parent, ROLE_TAG: "comparison-run", "task": run.task,
                "method": run.method, "seed": str(run.seed)}  # fmt: skip
        experiment = client.get_run(parent).info.experiment_id
        child = client.create_run(experiment, run_name=f"{run.method}-seed-{run.seed}", tags=tags).info.run_id
        index = read_checkpoint_index(run.config.out)
        params = flat_params(run.config.model_dump(mode="json"))
        params["trainable_params"] = str(index["trainable_params"][-1])
        for key, value in params.items():
            client.log_param(child, key, value)
        data_dir = self.data_dirs[run.task]
        RunLogger(self.uri, child).dataset(data_dir, read_manifest(data_dir))
        for step, accuracy in index.select("step", "eval_accuracy").iter_rows():
            client.log_metric(child, "eval_accuracy", accuracy, step=step)
        last = index.row(-1, named=True)
        client.log_metric(child, "trainable_params", last["trainable_params"], step=last["step"])
        client.log_metric(child, "param_share", last["trainable_params"] / last["model_params"], last["step"])
        client.set_terminated(child, "FINISHED")
        self.ids[run.key] = child
        self._save()

    def log_summary(self, summary: pl.DataFrame, out: Path) -> None:
        """Log each task's methods' mean and std final accuracy (``accuracy_mean/<method>``,
        ``accuracy_std/<method>``; no std from one seed) and the comparison's files on its parent run."""
        for task in self.data_dirs:
            logger = RunLogger(self.uri, self.ids[task])
            for row in summary.filter(pl.col("task") == task).iter_rows(named=True):
                logger.metric(f"accuracy_mean/{row['method']}", row["mean"], step=0)
                if row["std"] is not None:
                    logger.metric(f"accuracy_std/{row['method']}", row["std"], step=0)
            for name in COMPARISON_FILES:
                if (Path(out) / name).is_file():
                    logger.artifact(Path(out) / name)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run = self.runs[trial.config["run"]]
        if run_finished(run.config.out):
            self.log_run(run)


class TrialProgress(tune.Callback):
    """The comparison's bar in the Tune driver: runs finished of all, and the newest held-out accuracy
    a run reported (Tune's own trial table stays off under a quiet console)."""

    def __init__(self, total: int) -> None:
        self.total, self.bar = total, None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment; a bar stays here
        return {"total": self.total, "bar": None}

    def setup(self, **info) -> None:
        self.bar = progress(self.total, "comparison runs", "run")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.bar is not None and isinstance(result.get("eval_accuracy"), float):
            step = f" step {result['step']}" if "step" in result else ""
            accuracy = result["eval_accuracy"]
            self.bar.set_postfix_str(f"{trial.config['run']}{step}: eval accuracy {accuracy:.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{trial.config['run']} failed")
            self.bar.update(1)

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()


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
            name="compare",
            storage_path=str(Path(out).resolve() / "tune"),
            callbacks=[*callbacks, TrialProgress(len(runs))],
            verbose=TUNE_VERBOSITY[console.quiet()],
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
