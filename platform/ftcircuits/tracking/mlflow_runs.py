"""MLflow runs: a SQLite store under the run directory by default, or ``MLFLOW_TRACKING_URI``.

Several processes writing one SQLite file race, so a run is created once by
the driver (``create_run``) and only one process (rank 0) logs into it by id
(``RunLogger``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

_PARAM_NAME = re.compile(r"[\w\-. :/]+")  # what MLflow accepts in a param name
MIGRATION_LOGGERS = ("alembic", "mlflow.store.db.utils")
"""The loggers of a SQLite store's schema creation and migration, which say at INFO, in every process
that opens the store, "Creating initial MLflow database tables...", "Updating database tables" and
alembic's "Context impl SQLiteImpl", "Will assume non-transactional DDL", "Running upgrade ..."."""


def quiet_store_migrations() -> None:
    """Keep the store's schema creation and migration (MIGRATION_LOGGERS) to warnings and errors."""
    for name in MIGRATION_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def tracking_uri(out: Path) -> str:
    """Return ``MLFLOW_TRACKING_URI`` or a SQLite store in ``out``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def artifact_location(uri: str, out: Path) -> str | None:
    """Return where a new experiment keeps its artifacts: a tracking server's own store (None: the
    server's ``--artifacts-destination``, shared by runs of every ``out``), else ``<out>/mlartifacts``
    (MLflow's default, ``./mlruns``, would land in the current directory)."""
    return None if uri.startswith(("http://", "https://")) else (Path(out).resolve() / "mlartifacts").as_uri()


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """Flatten nested config values into dotted MLflow params.

    A mapping whose keys are not valid param names (regular expressions such as ``rank_pattern`` or
    ``lr_groups`` keys) stays one param, its JSON.
    """
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(_PARAM_NAME.fullmatch(str(k)) for k in value):
            flat |= flat_params(value, name + ".")
        else:
            text = json.dumps(value) if isinstance(value, dict) else str(value)
            flat[name] = text[:500]
    return flat


def create_run(out: Path, experiment: str, run_name: str, params: dict) -> tuple[str, str]:
    """Create (or reuse) ``experiment`` and a new run with ``params``; return (tracking uri, run id)."""
    from mlflow.tracking import MlflowClient

    Path(out).mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(out)
    quiet_store_migrations()
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        experiment_id = client.create_experiment(experiment, artifact_location=artifact_location(uri, out))
    else:
        experiment_id = found.experiment_id
    run = client.create_run(experiment_id, run_name=run_name)
    for key, value in flat_params(params).items():
        client.log_param(run.info.run_id, key, value)
    return uri, run.info.run_id


class RunLogger:
    """Logs metrics and artifacts into an existing run by id."""

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        quiet_store_migrations()
        self.client, self.run_id = MlflowClient(uri), run_id

    def metric(self, key: str, value: float, step: int) -> None:
        self.client.log_metric(self.run_id, key, value, step=step)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        """Log a file, or a directory's files, under ``folder``."""
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), folder)
        else:
            self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
