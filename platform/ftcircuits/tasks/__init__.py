"""Math tasks with clean/corrupted prompt pairs, a strict fine-tune/circuit split, parquet files.

The task families and their registry import no data-frame library; building and reading datasets
(``build``, ``io``: polars) load on first use, so a config that names a task stays light.
"""

from __future__ import annotations

from importlib import import_module

from ftcircuits.tasks.registry import TASKS, TaskSpecError, task_family

_LAZY = {
    "build_dataset": "build",
    "perturbed_circuit_splits": "build",
    "read_items": "io",
    "read_manifest": "io",
    "read_perturbed": "io",
    "write_dataset": "io",
}

__all__ = ["TASKS", "TaskSpecError", "task_family", *_LAZY]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"ftcircuits.tasks.{_LAZY[name]}"), name)
