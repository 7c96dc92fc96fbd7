"""MLflow runs: a SQLite store under the run directory by default, or ``MLFLOW_TRACKING_URI``.

Several processes writing one SQLite file race, so a run is created once by
the driver (``create_run``) and only one process (rank 0) logs into it by id
(``RunLogger``).

Every experiment is tagged a model-training one (``mlflow.experimentKind``) and every run carries its
role (``role``: finetune, circuits, analysis, comparison, comparison-run, ...). MLflow's UI reads the tag
where its GenAI / Model training switch is off; 3.17 ships the switch on and follows it instead (kept in
the browser, or given by a link as ``?workflowType=machine_learning``: ``ui_path``). A view of an
experiment's runs (filter, sort, columns, charts) is kept on the experiment as a shared view
(``share_view``) that the link names.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from urllib.parse import quote

_PARAM_NAME = re.compile(r"[\w\-. :/]+")  # what MLflow accepts in a param name
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # what MLflow's UI reads (and its kind selector writes)
MODEL_TRAINING = "custom_model_development"  # the UI's "Machine learning" / "Model training" kind
ROLE_TAG = "role"
UI_QUERY = "workflowType=machine_learning"  # MLflow 3.17's UI: open an experiment on its runs
DIGEST_CHARS = 36  # the longest dataset digest MLflow stores
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + a key: a runs view the UI opens as ?viewStateShareKey=key
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


def ui_path(experiment_id: str, view: str | None = None, charts: bool = False) -> str:
    """Return the MLflow UI's path (after the server's address) of an experiment's runs in the
    model-training view: as the shared ``view`` (``share_view``) if given, as charts if ``charts``."""
    query = (
        UI_QUERY
        + (f"&viewStateShareKey={quote(view)}" if view else "")
        + ("&compareRunsMode=CHART" if charts else "")
    )
    return f"/#/experiments/{experiment_id}/runs?{query}"


def share_view(client, experiment_id: str, key: str, state: dict) -> None:
    """Keep a runs view on the experiment (MLflow's shared view state, JSON): ``searchFilter``,
    ``orderByKey``, ``orderByAsc``, ``selectedColumns``, ``chartsSearchFilter``, ...; a sort other than
    by start time lists child runs flat, not folded under their parent."""
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))


def experiment_id(client, name: str, out: Path) -> str:
    """Return the id of experiment ``name``, created (tagged a model-training one) if missing; an
    experiment made before the tag gets it."""
    found = client.get_experiment_by_name(name)
    if found is None:
        location = artifact_location(tracking_uri(out), out)
        return client.create_experiment(name, location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return found.experiment_id


def create_run(
    out: Path, experiment: str, run_name: str, params: dict, role: str | None = None, tags: dict | None = None
) -> tuple[str, str]:
    """Create (or reuse) ``experiment`` and a new run with ``params``, tagged with its ``role`` (the
    experiment's name when None) and ``tags``; return (tracking uri, run id)."""
    from mlflow.tracking import MlflowClient

    Path(out).mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(out)
    quiet_store_migrations()
    client = MlflowClient(uri)
    run_tags = {ROLE_TAG: role or experiment} | (tags or {})
    run = client.create_run(experiment_id(client, experiment, out), run_name=run_name, tags=run_tags)
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

    def param(self, key: str, value) -> None:
        self.client.log_param(self.run_id, key, str(value))

    def dataset(self, directory: Path, manifest: dict) -> None:
        """Log the dataset in ``directory`` (its ``manifest``) as the run's input: ``dataset_input``."""
        self.client.log_inputs(self.run_id, datasets=[dataset_input(directory, manifest)])

    def artifact(self, path: Path, folder: str | None = None) -> None:
        """Log a file, or a directory's files, under ``folder``."""
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), folder)
        else:
            self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def dataset_input(directory: Path, manifest: dict, context: str = "training"):
    """Return an MLflow dataset input for a dataset directory: named after the directory, its digest the
    manifest's ``content_hash`` (its first 36 characters: all MLflow stores), the whole hash and the
    item counts in its profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    summary = manifest.get("summary", {})
    profile = {"content_hash": manifest["content_hash"], "items": summary.get("items"),
               "splits": summary.get("splits")}  # fmt: skip
    dataset = Dataset(
        name=Path(directory).name,
        digest=manifest["content_hash"][:DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": Path(directory).resolve().as_uri()}),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
