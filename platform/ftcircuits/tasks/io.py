"""Dataset files: ``items.parquet`` + ``manifest.json`` (+ ``perturbed/p0.30.parquet`` ...).

Every read is checked against the manifest: a readable parquet file, the columns of ``ITEMS_SCHEMA``
(``PERTURBED_SCHEMA``), and its content: the sha256 of the file's bytes the manifest holds (written with
the dataset), or for a manifest written before that, the hash of its rows (``content_hash``). A damaged
file or manifest is a ``DamagedFileError`` that names it and the command that rebuilds the dataset.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import polars as pl

from ftcircuits.integrity import DamagedFileError, file_sha256, read_json_checked, read_parquet_checked
from ftcircuits.options import Split, choices
from ftcircuits.paths import atomic_directory

ITEMS_FILE = "items.parquet"
MANIFEST_FILE = "manifest.json"
PERTURBED_DIR = "perturbed"
ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int64,
    "prompt": pl.String,
    "answer": pl.String,
    "corrupted_prompt": pl.String,
    "corrupted_answer": pl.String,
    "kind": pl.String,
    "split": pl.String,
}
"""The columns of ``items.parquet``, as ``tasks.build.build_dataset`` makes them."""
PERTURBED_SCHEMA: dict[str, pl.DataType] = {**ITEMS_SCHEMA, "perturbed": pl.Boolean}
"""The columns of a perturbed split, as ``tasks.build.perturbed_circuit_splits`` makes them."""


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
    """Write a dataset directory atomically (all files or none); return its path. The manifest gets each
    file's rows hash (``content_hash``, what caches are keyed by) and the sha256 of its bytes (checked on
    every read)."""
    manifest = {**manifest, "content_hash": content_hash(items)}
    with atomic_directory(Path(directory)) as tmp:
        items.write_parquet(tmp / ITEMS_FILE)
        manifest["items_sha256"] = file_sha256(tmp / ITEMS_FILE)
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
                    "sha256": file_sha256(tmp / PERTURBED_DIR / perturbed_name(ratio)),
                }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return Path(directory)


class DatasetError(ValueError):
    """A dataset directory is missing or unreadable."""


def make_data_command(spec: dict, model: str, out: Path, perturb_ratios: list[float]) -> str:
    """Return the ``jobs.make_data`` command that writes the dataset of task ``spec`` (a ``TaskSpec`` as
    JSON) under ``model``'s tokenizer into ``out``; the build is deterministic, so it is the same again."""
    values = {
        "tasks": json.dumps([spec]),
        "model": model,
        "out": str(out),
        "perturb_ratios": json.dumps(perturb_ratios),
    }
    settings = " ".join(f"--set {shlex.quote(f'{key}={value}')}" for key, value in values.items())
    return f"python -m jobs.make_data {settings}"


def rebuild_hint(directory: Path, manifest: dict | None = None) -> str:
    """Return how to rebuild the dataset at ``directory``: the ``jobs.make_data`` command of its manifest's
    task spec and tokenizer (a dataset written by ``make_task_dataset``), else deleting it and rerunning
    the job that made it."""
    manifest = manifest or {}
    spec, tokenizer = manifest.get("spec"), manifest.get("tokenizer")
    model = tokenizer.get("name") if isinstance(tokenizer, dict) else None
    if isinstance(spec, dict) and isinstance(model, str):
        ratios = sorted(float(ratio) for ratio in manifest.get("perturbed", {}))
        return make_data_command(spec, model, Path(directory).parent, ratios)
    return (
        f"delete {directory} and rerun the job that made it (jobs.finetune, jobs.pipeline, "
        f"jobs.compare_methods and jobs.compositional rebuild a missing dataset; else python -m "
        f"jobs.make_data --task ... --out {Path(directory).parent})"
    )


def read_manifest(directory: Path) -> dict:
    """Return a dataset's manifest; DatasetError when there is none, DamagedFileError when it is damaged."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(f"no dataset at {directory}: {MANIFEST_FILE} is missing (run jobs.make_data)")
    manifest = read_json_checked(path, rebuild_hint(directory))
    if not isinstance(manifest.get("content_hash"), str):
        raise DamagedFileError(path, "no content_hash of the items in it", rebuild_hint(directory))
    return manifest


_ROWS_VERIFIED: set[tuple[str, int, int, str]] = set()  # (file, size, mtime_ns, rows hash) checked


def _checked_table(
    path: Path, schema: dict[str, pl.DataType], sha256: object, rows_hash: object, rebuild: str
) -> pl.DataFrame:
    """Return the table at ``path``, checked readable, of ``schema``, and of the content the manifest
    gives: the sha256 of its bytes, else (a manifest written before it) the hash of its rows."""
    frame = read_parquet_checked(path, rebuild, schema)
    if isinstance(sha256, str):
        if file_sha256(path) != sha256:
            raise DamagedFileError(path, "its content does not match the manifest's sha256", rebuild)
        return frame
    stat = path.stat()
    verdict = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(rows_hash))
    if verdict not in _ROWS_VERIFIED:  # the rows hash costs ~13 reads of the file: once per process
        if content_hash(frame) != rows_hash:
            raise DamagedFileError(path, "its rows do not match the manifest's content_hash", rebuild)
        _ROWS_VERIFIED.add(verdict)
    return frame


def read_items(directory: Path, split: Split | None = None) -> pl.DataFrame:
    """Read a dataset's items, optionally one split ("finetune" or "circuit"), checked against its
    manifest (DamagedFileError when the file or the manifest is damaged)."""
    manifest = read_manifest(directory)
    if split is not None and split not in choices(Split):
        raise DatasetError(f"split must be one of {', '.join(choices(Split))}, got {split!r}")
    frame = _checked_table(
        Path(directory) / ITEMS_FILE, ITEMS_SCHEMA, manifest.get("items_sha256"),
        manifest["content_hash"], rebuild_hint(directory, manifest),
    )  # fmt: skip
    return frame if split is None else frame.filter(pl.col("split") == split)


def read_perturbed(directory: Path, ratio: float) -> pl.DataFrame:
    """Read the circuit split perturbed at ``ratio``, checked against the manifest's entry for it."""
    manifest = read_manifest(directory)
    key = f"{ratio:.2f}"
    variants = manifest.get("perturbed", {})
    if key not in variants:
        have = ", ".join(variants) or "none"
        raise DatasetError(f"no perturbed variant at ratio {key} in {directory}; have: {have}")
    entry, rebuild = variants[key], rebuild_hint(directory, manifest)
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or "content_hash" not in entry:
        raise DamagedFileError(
            Path(directory) / MANIFEST_FILE,
            f"its entry of perturbed ratio {key} lacks a file or hash",
            rebuild,
        )
    path = Path(directory) / entry["file"]
    return _checked_table(path, PERTURBED_SCHEMA, entry.get("sha256"), entry["content_hash"], rebuild)
