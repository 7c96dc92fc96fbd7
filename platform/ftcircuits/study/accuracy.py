"""Accuracy of a model on every task's circuit split: the study's before/after table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ftcircuits.encoding import task_accuracy
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import MANIFEST_FILE, read_items


def task_datasets(
    tasks: Iterable, tokenizer: PreTrainedTokenizerBase, model: str, data_dir: Path
) -> dict[str, Path]:
    """Return each task's dataset directory under ``data_dir`` (``tasks``: TaskSpec), built when missing."""
    directories = {}
    for spec in tasks:
        directory = Path(data_dir) / spec.dataset_name()
        if not (directory / MANIFEST_FILE).is_file():
            directory, _ = make_task_dataset(spec, tokenizer, model, Path(data_dir))
        directories[spec.dataset_name()] = directory
    return directories


def circuit_split_accuracy(
    model,
    tokenizer: PreTrainedTokenizerBase,
    datasets: Mapping[str, Path],
    batch_size: int = 256,
    examples: int | None = None,
) -> dict[str, float]:
    """Return the model's accuracy on each dataset's circuit split (held out from fine-tuning), on a seeded
    sample of ``examples`` items (default: all; datasets are ordered by kind, so never the first N)."""
    accuracy = {}
    for name, path in datasets.items():
        items = read_items(path, "circuit")
        if examples and examples < items.height:
            items = items.with_row_index("_row").sample(examples, seed=0).sort("_row").drop("_row")
        accuracy[name] = task_accuracy(model, tokenizer, items, batch_size)["all"]
    return accuracy
