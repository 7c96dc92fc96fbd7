"""Where runs are stored: relative run paths are resolved against ``FTCIRCUITS_STORAGE`` when it is set.

A job submitted with ``ray job submit --working-dir`` runs in Ray's unpacked copy of the working directory
(``<ray temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>``), which goes with the
cluster: there a relative ``out`` without ``FTCIRCUITS_STORAGE`` is refused before any work.
"""

from __future__ import annotations

import os
from pathlib import Path

STORAGE_ENV = "FTCIRCUITS_STORAGE"
RAY_COPY_PARTS = ("runtime_resources", "working_dir_files")  # Ray's unpacked working directories


class StorageError(ValueError):
    """A run path cannot be stored safely; the message says what to set."""


def storage_root() -> Path | None:
    """Return ``FTCIRCUITS_STORAGE`` (an absolute path), or None when it is unset or empty."""
    value = os.environ.get(STORAGE_ENV)
    if not value:
        return None
    if not Path(value).is_absolute():
        raise StorageError(f"{STORAGE_ENV}={value!r} must be an absolute path (a storage every node shares)")
    return Path(value)


def ray_working_dir_copy(cwd: Path | None = None) -> Path | None:
    """Return Ray's unpacked copy of a job's working directory when ``cwd`` (default: the current
    directory) lies in one, else None."""
    parts = (Path.cwd() if cwd is None else Path(cwd)).parts
    for i in range(len(parts) - 2):
        if parts[i : i + 2] == RAY_COPY_PARTS:
            return Path(*parts[: i + 3])
    return None


def resolve_run_path(path: Path | str) -> Path:
    """Return a run path (a run's input or output directory) as it is stored: an absolute path as is,
    a relative one under ``FTCIRCUITS_STORAGE`` when set, else unchanged (relative to the current
    directory)."""
    path = Path(path)
    root = storage_root()
    return path if path.is_absolute() or root is None else root / path


def resolve_out(out: Path | str, field: str = "out") -> Path:
    """Return ``out`` resolved like ``resolve_run_path``; raise StorageError for a relative ``out`` in
    Ray's copy of the working directory without ``FTCIRCUITS_STORAGE`` (its results would be lost)."""
    resolved = resolve_run_path(out)
    copy = ray_working_dir_copy()
    if not resolved.is_absolute() and copy is not None:
        raise StorageError(
            f"{field} {str(out)!r} is relative and this job runs in Ray's copy of the working directory "
            f"({copy}); its results would be lost with the cluster: set {STORAGE_ENV}=/shared/path or "
            f"give an absolute {field}"
        )
    return resolved
