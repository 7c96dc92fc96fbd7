"""Dataset files: ``items.parquet`` + ``manifest.json`` (+ ``perturbed/p0.30.parquet`` ...)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from ftcircuits.options import Split, choices
from ftcircuits.paths import atomic_directory

ITEMS_FILE = "items.parquet"
MANIFEST_FILE = "manifest.json"
PERTURBED_DIR = "perturbed"


def content_hash(frame: pl.DataFrame) -> str:
    """Return a sha256 of the rows in order, stable across polars versions."""
    digest = hashlib.sha256()
    for row in frame.iter_rows():
        digest.update(json.dumps(row, separators=(",", ":")).encode())
    return digest.hexdigest()


def perturbed_name(ratio: float) -> str:
    return f"p{ratio:.2f}.parquet"


def write_dataset(
    directory: Path,
    items: pl.DataFrame,
    manifest: dict,
    perturbed: dict[float, pl.DataFrame] | None = None,
) -> Path:
    """Write a dataset directory atomically (all files or none); return its path."""
    manifest = {**manifest, "content_hash": content_hash(items)}
    with atomic_directory(Path(directory)) as tmp:
        items.write_parquet(tmp / ITEMS_FILE)
        if perturbed:
            (tmp / PERTURBED_DIR).mkdir()
            manifest["perturbed"] = {}
            for ratio, frame in sorted(perturbed.items()):
                frame.write_parquet(tmp / PERTURBED_DIR / perturbed_name(ratio))
                manifest["perturbed"][f"{ratio:.2f}"] = {
                    "file": f"{PERTURBED_DIR}/{perturbed_name(ratio)}",
                    "requested": round(ratio * frame.height),
                    "replaced": int(frame["perturbed"].sum()),
                    "content_hash": content_hash(frame),
                }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return Path(directory)


class DatasetError(ValueError):
    """A dataset directory is missing or unreadable."""


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(f"no dataset at {directory}: {MANIFEST_FILE} is missing (run jobs.make_data)")
    return json.loads(path.read_text())


def read_items(directory: Path, split: Split | None = None) -> pl.DataFrame:
    """Read a dataset's items, optionally one split ("finetune" or "circuit")."""
    read_manifest(directory)
    frame = pl.read_parquet(Path(directory) / ITEMS_FILE)
    if split is None:
        return frame
    if split not in choices(Split):
        raise DatasetError(f"split must be one of {', '.join(choices(Split))}, got {split!r}")
    return frame.filter(pl.col("split") == split)


def read_perturbed(directory: Path, ratio: float) -> pl.DataFrame:
    """Read the circuit split perturbed at ``ratio``."""
    manifest = read_manifest(directory)
    key = f"{ratio:.2f}"
    if key not in manifest.get("perturbed", {}):
        have = ", ".join(manifest.get("perturbed", {})) or "none"
        raise DatasetError(f"no perturbed variant at ratio {key} in {directory}; have: {have}")
    return pl.read_parquet(Path(directory) / manifest["perturbed"][key]["file"])
