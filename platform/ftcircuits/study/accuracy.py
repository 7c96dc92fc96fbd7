"""The datasets and accuracy stages: every task's dataset, and a model's accuracy on each circuit split (the
study's before/after table), cached by everything that shapes it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ftcircuits.encoding import task_accuracy
from ftcircuits.integrity import DamagedFileError, read_json_with_keys
from ftcircuits.paths import atomic_file
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import MANIFEST_FILE, read_items, read_manifest
from ftcircuits.tasks.spec import TaskSpec


def task_datasets(
    tasks: Iterable[TaskSpec], tokenizer: PreTrainedTokenizerBase, model: str, data_dir: Path
) -> dict[str, Path]:
    """Return each task's dataset directory under ``data_dir``, built when missing."""
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


def model_fingerprint(source: str | Path) -> dict:
    """Return what identifies a model's weights: for a directory, each weight file's name, size and
    modification time (a retrained or replaced model changes it); for any other source, the source."""
    path = Path(source)
    if not path.is_dir():
        return {"source": str(source)}
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    return {"source": str(path.resolve()),
            "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}  # fmt: skip


def accuracy_key(
    model: str | Path, datasets: Mapping[str, Path], batch_size: int, examples: int | None
) -> dict:
    """Return everything that shapes an accuracy table: the model's weights, each dataset's content, the
    sample (its size; the seed is fixed at 0) and the batch (padding changes the arithmetic)."""
    return {
        "model": model_fingerprint(model),
        "datasets": {name: read_manifest(path).get("content_hash") for name, path in datasets.items()},
        "examples": examples,
        "sample_seed": 0,
        "batch_size": batch_size,
    }


def cached_accuracy(path: Path, key: dict, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Return the accuracy table cached in ``path`` when it was computed under ``key``, else compute it and
    cache it (atomically) with its key. A damaged cache (empty, truncated, not an object of ``key`` and
    ``accuracy``) is only a cache: it is named on stderr, recomputed and overwritten."""
    if path.is_file():
        try:
            cached = read_json_with_keys(path, "recomputed now", ("key", "accuracy"))
        except DamagedFileError as error:
            print(f"warning: {error}", file=sys.stderr)
            cached = {}
        if cached.get("key") == key and isinstance(cached.get("accuracy"), dict):
            return cached["accuracy"]
    accuracy = compute()
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({"key": key, "accuracy": accuracy}, indent=1))
    return accuracy
