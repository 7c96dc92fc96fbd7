"""Where a fine-tuning run keeps its things (a leaf: fine-tuning, circuits, config and cluster share it).

<run>/finetune.json                    the run's config, dataset and MLflow run (written by the driver)
<run>/data/<dataset>/                  the dataset it was built with (by jobs.finetune)
<run>/checkpoints/step-NNNNNN/         Hugging Face weights or adapter, with the tokenizer
<run>/checkpoints/index.parquet        step, path, train_loss, eval_accuracy
<run>/ray/                             Ray Train's storage (resumption)
<run>/circuits/<settings hash>/        circuits of its checkpoints, and analysis/ beside them
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ftcircuits.integrity import DamagedFileError, read_json_checked, read_parquet_checked

RUN_CONFIG_FILE = "finetune.json"
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
INDEX_FILE = "index.parquet"
PROGRESS_FILE = "progress.json"  # rank 0's newest step, loss and held-out accuracy, for the driver's bar
RAY_DIR = "ray"
CIRCUITS_DIR = "circuits"
ANALYSIS_DIR = "analysis"
INDEX_SCHEMA = {"step": pl.Int64, "path": pl.String, "train_loss": pl.Float64, "eval_accuracy": pl.Float64}
INDEX_COLUMNS = tuple(INDEX_SCHEMA)  # every index has them; fine-tuning adds the run's size and length


def checkpoint_name(step: int) -> str:
    """Return a checkpoint's directory name, ``step-NNNNNN`` (step 0 holds the base model)."""
    return f"step-{step:06d}"


def checkpoint_path(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS_DIR / checkpoint_name(step)


def index_path(run: Path) -> Path:
    return Path(run) / CHECKPOINTS_DIR / INDEX_FILE


def run_config_path(run: Path) -> Path:
    return Path(run) / RUN_CONFIG_FILE


def finetune_rebuild(run: Path) -> str:
    """Return how a fine-tuning run's files are rebuilt: a finished run is reused as it is (deleting one
    checkpoint or the index does not redo it), so the run directory goes, and the job that made it reruns."""
    return (
        f"delete the run directory {run} and rerun the job that fine-tuned it with the same config "
        f"(python -m jobs.finetune --config ..., or the pipeline, comparison or CircuitLoRA job; "
        f"{RUN_CONFIG_FILE} records it)"
    )


def read_checkpoint_index(run: Path) -> pl.DataFrame:
    """Return the checkpoint index (step, path, train_loss, eval_accuracy) of a run, by step.

    Raises FileNotFoundError naming the run when it has no index, DamagedFileError when it is damaged
    (empty, truncated, not parquet, a column of ``INDEX_SCHEMA`` missing or of another dtype, no row).
    """
    path = index_path(run)
    if not path.is_file():
        raise FileNotFoundError(f"no fine-tuning run at {run} ({path} missing; run jobs.finetune)")
    index = read_parquet_checked(path, finetune_rebuild(run), INDEX_SCHEMA)
    if index.is_empty():
        raise DamagedFileError(path, "no row: the index lists no checkpoint", finetune_rebuild(run))
    return index.sort("step")


def run_finished(run: Path) -> bool:
    """Return whether ``run`` holds a run that trained to its end (its index reaches ``total_steps``);
    DamagedFileError when its index is damaged (a run that may be finished is not retrained over it)."""
    if not index_path(run).is_file():
        return False
    index = read_checkpoint_index(run)
    return "total_steps" in index.columns and index["step"].max() == index["total_steps"].max()


def check_index_directories(run: Path, index: pl.DataFrame) -> None:
    """Raise DamagedFileError naming the index unless every row's checkpoint directory is present and is
    the row's step's (``<run>/checkpoints/step-NNNNNN``, its directory name)."""
    missing = [row for row in index.iter_rows(named=True) if not Path(row["path"]).is_dir()]
    if missing:
        shown = ", ".join(f"step {row['step']} ({row['path']})" for row in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        problem = f"lists checkpoints whose directories are missing: {shown}{more}"
        raise DamagedFileError(index_path(run), problem, finetune_rebuild(run))
    for row in index.iter_rows(named=True):
        if Path(row["path"]).name != (name := checkpoint_name(row["step"])):
            problem = f"the row of step {row['step']} names the directory {row['path']}, not one named {name}"
            raise DamagedFileError(index_path(run), problem, finetune_rebuild(run))


def check_run(run: Path) -> None:
    """Raise FileNotFoundError naming what is missing unless ``run`` holds a fine-tuning run (its record
    and its index), and DamagedFileError naming the file when one of them is damaged or the index lists a
    checkpoint directory that is not there."""
    index = read_checkpoint_index(run)
    read_run_record(run)
    check_index_directories(run, index)


def read_run_record(run: Path) -> dict:
    """Return what the driver recorded of a run (config, ``data_dir``, ``mlflow_run``).

    Raises FileNotFoundError when ``run`` is not a fine-tuning run directory.
    """
    path = run_config_path(run)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run} is not a fine-tuning run directory")
    return read_json_checked(path, finetune_rebuild(run))
