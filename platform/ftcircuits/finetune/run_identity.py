"""What identifies a fine-tuning run, and the guard that keeps one run per run directory."""

from __future__ import annotations

from pathlib import Path

from ftcircuits.finetune.methods import check_schedule
from ftcircuits.finetune.schedule import optimizer_steps
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.run_layout import read_run_record, run_config_path
from ftcircuits.tasks.io import read_items, read_manifest


def run_record(config: FinetuneConfig, data_dir: Path) -> dict:
    """Return what identifies a fine-tuning run : its full config and
    its dataset directory, with ``out`` made absolute."""
    out = Path(config.out).resolve()
    return config.model_copy(update={"out": out}).model_dump(mode="json") | {
        "data_dir": str(Path(data_dir).resolve())
    }


def check_run_directory(record: dict) -> None:
    """Refuse an ``out`` that holds a run with another config; the same config resumes (or is done).

    Raises ValueError naming the differing fields, before anything starts or is overwritten.
    """
    if not run_config_path(record["out"]).is_file():
        return
    previous = read_run_record(record["out"])
    previous.pop("mlflow_run", None)
    differing = sorted(_differing_keys(previous, record))
    if differing:
        raise ValueError(
            f"{record['out']} already holds a fine-tuning run with another config ({', '.join(differing)} "
            "differ): choose another out, or delete it to start afresh"
        )


def _differing_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key in a.keys() | b.keys():
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            keys |= _differing_keys(left, right, f"{prefix}{key}.")
        elif left != right:
            keys.add(f"{prefix}{key}")
    return keys


def run_steps(config: FinetuneConfig, data_dir: Path) -> int:
    """Return the optimiser steps of a run on the dataset in ``data_dir`` (its manifest's count of the
    fine-tuning split, or the split's rows where the manifest holds no summary)."""
    summary = read_manifest(data_dir).get("summary")
    examples = summary["splits"]["finetune"] if summary else read_items(data_dir, "finetune").height
    train = config.train
    return optimizer_steps(examples, train.epochs, train.micro_batch_size, config.scaling.workers,
                           train.grad_accumulation)  # fmt: skip


def check_run_schedule(config: FinetuneConfig, data_dir: Path) -> None:
    """Refuse, before any worker starts, a method whose schedule does not fit the run's steps."""
    check_schedule(config.method, run_steps(config, data_dir))
