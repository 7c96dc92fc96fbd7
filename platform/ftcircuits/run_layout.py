"""Where a fine-tuning run keeps its things (a leaf: fine-tuning, circuits, config and cluster share it).

<run>/finetune.json                    the run's config, dataset and MLflow run (written by the driver)
<run>/data/<dataset>/                  the dataset it was built with (by jobs.finetune)
<run>/checkpoints/step-NNNNNN/         Hugging Face weights or adapter, with the tokenizer
<run>/checkpoints/index.parquet        step, path, train_loss, eval_accuracy
<run>/ray/                             Ray Train's storage (resumption)
<run>/circuits/<settings hash>/        circuits of its checkpoints, and analysis/ beside them
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

RUN_CONFIG_FILE = "finetune.json"
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
INDEX_FILE = "index.parquet"
PROGRESS_FILE = "progress.json"  # rank 0's newest step, loss and held-out accuracy, for the driver's bar
RAY_DIR = "ray"
CIRCUITS_DIR = "circuits"
ANALYSIS_DIR = "analysis"
INDEX_COLUMNS = ("step", "path", "train_loss", "eval_accuracy")


def checkpoint_name(step: int) -> str:
    """Return a checkpoint's directory name, ``step-NNNNNN`` (step 0 holds the base model)."""
    return f"step-{step:06d}"


def checkpoint_path(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS_DIR / checkpoint_name(step)


def index_path(run: Path) -> Path:
    return Path(run) / CHECKPOINTS_DIR / INDEX_FILE


def run_config_path(run: Path) -> Path:
    return Path(run) / RUN_CONFIG_FILE


def read_checkpoint_index(run: Path) -> pl.DataFrame:
    """Return the checkpoint index (step, path, train_loss, eval_accuracy) of a run, by step.

    Raises FileNotFoundError naming the run when it has no index.
    """
    path = index_path(run)
    if not path.is_file():
        raise FileNotFoundError(f"no fine-tuning run at {run} ({path} missing; run jobs.finetune)")
    return pl.read_parquet(path).sort("step")


def run_finished(run: Path) -> bool:
    """Return whether ``run`` holds a run that trained to its end (its index reaches ``total_steps``)."""
    path = index_path(run)
    if not path.is_file():
        return False
    index = pl.read_parquet(path)
    return "total_steps" in index.columns and index["step"].max() == index["total_steps"].max()


def check_run(run: Path) -> None:
    """Raise FileNotFoundError naming what is missing unless ``run`` holds a complete fine-tuning run:
    its record, its index and every checkpoint the index lists."""
    index = read_checkpoint_index(run)
    read_run_record(run)
    missing = [p for p in index["path"] if not Path(p).is_dir()]
    if missing:
        raise FileNotFoundError(f"checkpoints listed in the index are missing: {missing[:3]}")


def read_run_record(run: Path) -> dict:
    """Return what the driver recorded of a run (config, ``data_dir``, ``mlflow_run``).

    Raises FileNotFoundError when ``run`` is not a fine-tuning run directory.
    """
    path = run_config_path(run)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run} is not a fine-tuning run directory")
    return json.loads(path.read_text())
