"""Files checked before use: a damaged file stops the job with one line naming it, what is wrong, and how
to rebuild it (``DamagedFileError``; the jobs exit 2 on it, without a traceback)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl


class DamagedFileError(ValueError):
    """A file the platform reads is missing, truncated, empty, of the wrong schema or content: ``path``,
    ``problem`` and ``rebuild`` (the command, or the step, that rebuilds it) are in the message."""

    def __init__(self, path: Path | str, problem: str, rebuild: str) -> None:
        self.path, self.problem, self.rebuild = Path(path), problem, rebuild
        super().__init__(f"{path}: {problem}; to rebuild it: {rebuild}")


def file_sha256(path: Path | str) -> str:
    """Return the sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checked_size(path: Path | str, rebuild: str) -> Path:
    """Return ``path``; DamagedFileError when it is missing or empty (0 bytes)."""
    path = Path(path)
    if not path.is_file():
        raise DamagedFileError(path, "the file is missing", rebuild)
    if path.stat().st_size == 0:
        raise DamagedFileError(path, "the file is empty (0 bytes)", rebuild)
    return path


def read_parquet_checked(
    path: Path | str, rebuild: str, schema: dict[str, pl.DataType] | None = None
) -> pl.DataFrame:
    """Return a parquet file's table; DamagedFileError when it is missing, empty, unreadable (truncated,
    not parquet) or lacks a column of ``schema`` (name to dtype) or holds one of another dtype."""
    path = checked_size(path, rebuild)
    try:
        frame = pl.read_parquet(path)
    except Exception as error:  # polars raises ComputeError, OSError, ... for a damaged file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DamagedFileError(path, f"not a readable parquet file, truncated or overwritten ({first})",
                               rebuild) from None  # fmt: skip
    for name, dtype in (schema or {}).items():
        if name not in frame.columns:
            raise DamagedFileError(path, f"wrong schema: no column {name!r} (has {frame.columns})", rebuild)
        if frame.schema[name] != dtype:
            raise DamagedFileError(
                path, f"wrong schema: column {name!r} is {frame.schema[name]}, expected {dtype}", rebuild
            )
    return frame


def read_json_checked(path: Path | str, rebuild: str) -> dict:
    """Return a JSON file's object; DamagedFileError when it is missing, empty, not JSON or not an object."""
    path = checked_size(path, rebuild)
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedFileError(path, f"not valid JSON, truncated or overwritten ({error})", rebuild) from None
    if not isinstance(value, dict):
        raise DamagedFileError(path, f"expected a JSON object, found {type(value).__name__}", rebuild)
    return value
