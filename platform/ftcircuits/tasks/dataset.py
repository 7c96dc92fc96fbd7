"""Make a task's dataset directory under a model's tokenizer (what ``jobs.make_data`` runs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl
from transformers import PreTrainedTokenizerBase

from ftcircuits.tasks.build import build_dataset, perturbed_circuit_splits
from ftcircuits.tasks.io import write_dataset
from ftcircuits.tasks.spec import TaskSpec


def dataset_summary(items: pl.DataFrame) -> dict:
    """Return counts per split and kind, unique prompts per kind, and kind shares."""
    per = items.group_by("split", "kind").agg(
        pl.len().alias("items"), pl.col("prompt").n_unique().alias("unique")
    )
    kinds = items.group_by("kind").agg(pl.len().alias("items"), pl.col("prompt").n_unique().alias("unique"))
    return {
        "items": items.height,
        "splits": dict(items.group_by("split").len().iter_rows()),
        "kind_share": {k: round(n / items.height, 4) for k, n, _ in kinds.sort("kind").iter_rows()},
        "unique_prompts": {k: u for k, _, u in kinds.sort("kind").iter_rows()},
        "per_split_kind": [
            dict(zip(per.columns, row, strict=True)) for row in per.sort("split", "kind").iter_rows()
        ],
        "corrupted_answer_one_token": int(items["corrupted_answer"].is_not_null().sum()),
    }


def make_task_dataset(
    spec: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_name: str,
    out: Path,
    perturb_ratios: Sequence[float] = (),
) -> tuple[Path, dict]:
    """Build, split, perturb and write one task's dataset; return its directory and manifest."""
    family = spec.family()
    items, counts = build_dataset(family, tokenizer, spec.items(), spec.seed, spec.circuit_share)
    perturbed = perturbed_circuit_splits(items, family, tokenizer, perturb_ratios, spec.seed)
    manifest = {
        "task": spec.name,
        "parameters": family.parameters(),
        "seed": spec.seed,
        "requested_items": spec.items(),
        "circuit_share": spec.circuit_share,
        "tokenizer": {"name": tokenizer_name, "vocab_size": len(tokenizer)},
        "counts": counts.as_dict(),
        "summary": dataset_summary(items),
        "spec": spec.model_dump(mode="json", exclude_none=True),  # with the tokenizer: how to rebuild it
    }
    directory = write_dataset(Path(out) / spec.dataset_name(), items, manifest, perturbed)
    return directory, manifest
