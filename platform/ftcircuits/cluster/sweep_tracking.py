"""MLflow from the Tune driver only: one parent run per sweep, a child run per trial.

Trials sit side by side in the MLflow UI's compare view (tag ``mlflow.parentRunId``). A trial whose
run's index falls short of its steps (ASHA stopped it) is marked stopped early (tag
``stopped_early``, status KILLED) rather than finished. The trial -> run map is
kept in the sweep directory, so a restored sweep logs into the same child runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray import tune

from ftcircuits.cluster.sweep_trial import TRIALS_DIR
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import run_finished
from ftcircuits.tracking.mlflow_runs import ROLE_TAG, flat_params

CHILDREN_FILE = "mlflow_trials.json"


def stopped_early(trial_dir: Path) -> bool:
    """Return whether a trial ended before training to its end (ASHA stopped it): its run's index falls
    short of the run's steps. (One that ASHA stops at its last checkpoint trained to its end.)"""
    return not run_finished(trial_dir)


class TrialRuns(tune.Callback):
    """Creates a child MLflow run per trial, logs its held-out accuracy per step, closes it."""

    def __init__(self, uri: str, parent_run_id: str, sweep_dir: Path) -> None:
        self.uri, self.parent, self.path = uri, parent_run_id, Path(sweep_dir) / CHILDREN_FILE
        self.children: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def _child(self, trial) -> str:
        if trial.trial_id not in self.children and self.path.is_file():  # restored: the file is newest
            self.children = json.loads(self.path.read_text())
        if trial.trial_id not in self.children:
            client = self._client()
            experiment = client.get_run(self.parent).info.experiment_id
            tags = {"mlflow.parentRunId": self.parent, ROLE_TAG: "sweep-trial", "trial_id": trial.trial_id}
            run = client.create_run(experiment, run_name=f"trial-{trial.trial_id}", tags=tags)
            for key, value in flat_params(dict(trial.config)).items():
                client.log_param(run.info.run_id, key, value)
            self.children[trial.trial_id] = run.info.run_id
            with atomic_file(self.path) as tmp:
                tmp.write_text(json.dumps(self.children, indent=1))
        return self.children[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._child(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "eval_accuracy" in result and "step" in result:
            self._client().log_metric(
                self._child(trial), "eval_accuracy", result["eval_accuracy"], step=result["step"]
            )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        early = stopped_early(self.path.parent / TRIALS_DIR / trial.trial_id)
        client, run_id = self._client(), self._child(trial)
        client.set_tag(run_id, "stopped_early", str(early).lower())
        client.set_terminated(run_id, "KILLED" if early else "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._client().set_terminated(self._child(trial), "FAILED")
