"""Math tasks with clean/corrupted prompt pairs, a strict fine-tune/circuit split, parquet files."""

from ftcircuits.tasks.build import build_dataset, perturbed_circuit_splits
from ftcircuits.tasks.io import read_items, read_manifest, read_perturbed, write_dataset
from ftcircuits.tasks.registry import TASKS, TaskSpecError, task_family

__all__ = [
    "TASKS",
    "TaskSpecError",
    "build_dataset",
    "perturbed_circuit_splits",
    "read_items",
    "read_manifest",
    "read_perturbed",
    "task_family",
    "write_dataset",
]
