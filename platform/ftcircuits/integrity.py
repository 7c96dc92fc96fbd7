"""Files checked before use: a damaged file stops the job with one line naming it, what is wrong, and how
to rebuild it (``DamagedFileError``; the jobs exit 2 on it, without a traceback).

polars is imported where a parquet file is read, not here: the GPU cores (``jobs.bench_gpu``) load models,
whose checks live here, on machines without polars."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    import polars as pl

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


def read_json_with_keys(path: Path | str, rebuild: str, keys: tuple[str, ...]) -> dict:
    """Return a JSON file's object (``read_json_checked``); DamagedFileError when it lacks one of ``keys``."""
    value = read_json_checked(path, rebuild)
    missing = [key for key in keys if key not in value]
    if missing:
        raise DamagedFileError(path, f"wrong schema: no key {missing[0]!r} (has {sorted(value)})", rebuild)
    return value


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path | str, rebuild: str) -> Path:
    """Return ``path``; DamagedFileError when it is missing, empty, not a PNG (its 8-byte signature) or cut
    before its closing ``IEND`` chunk (the last 12 bytes)."""
    path = checked_size(path, rebuild)
    with open(path, "rb") as handle:
        head = handle.read(len(PNG_SIGNATURE))
        handle.seek(max(0, path.stat().st_size - 12))
        tail = handle.read()
    if head != PNG_SIGNATURE:
        raise DamagedFileError(path, "not a PNG image (no PNG signature), overwritten", rebuild)
    if tail[4:8] != b"IEND":
        raise DamagedFileError(path, "truncated: the PNG image has no closing IEND chunk", rebuild)
    return path


# bytes per element of each safetensors dtype (the format's own names); a dtype not listed is not sized
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "I16": 2, "F16": 2,
    "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "C64": 8, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit on the header's length


def _tensor_entry(entry: object) -> bool:
    """Whether a safetensors header entry has a dtype, a shape and [begin, end] data_offsets."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        return False
    return all(isinstance(n, int) and n >= 0 for n in [*shape, *offsets])


def check_safetensors(path: Path | str, rebuild: str) -> dict[str, dict]:
    """Return a safetensors file's tensor entries (name to dtype, shape, data_offsets), read from its header
    alone (no tensor is loaded); DamagedFileError when the file is missing, empty, truncated, has trailing
    bytes, or its header is not JSON or does not describe its bytes: the header is an 8-byte little-endian
    length N, then N bytes of JSON; the tensors' byte ranges must tile the rest of the file exactly, and each
    range must hold its shape's elements of its dtype."""
    path = checked_size(path, rebuild)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        if length is None:
            raise DamagedFileError(
                path, f"truncated: {size} bytes, shorter than the 8-byte header length", rebuild
            )
        if length > SAFETENSORS_MAX_HEADER or 8 + length > size:
            problem = (f"truncated or overwritten: the header length is {length} bytes, the file holds "
                       f"{size}")  # fmt: skip
            raise DamagedFileError(path, problem, rebuild)
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise DamagedFileError(path, "wrong schema: the safetensors header is not JSON", rebuild) from None
    if not isinstance(header, dict):
        raise DamagedFileError(path, "wrong schema: the safetensors header is not a JSON object", rebuild)
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    ranges = []
    for name, entry in tensors.items():
        if not _tensor_entry(entry):
            raise DamagedFileError(
                path,
                f"wrong schema: tensor {name!r} lacks a dtype, shape or [begin, end] data_offsets",
                rebuild,
            )
        begin, end = entry["data_offsets"]
        width = SAFETENSORS_DTYPE_BYTES.get(entry["dtype"])
        elements = 1
        for n in entry["shape"]:
            elements *= n
        if end < begin or (width is not None and end - begin != elements * width):
            problem = (f"wrong schema: tensor {name!r} ({entry['dtype']} {entry['shape']}) does not fit its "
                       f"data_offsets {entry['data_offsets']}")  # fmt: skip
            raise DamagedFileError(path, problem, rebuild)
        ranges.append((begin, end, name))
    covered = 0
    for begin, end, name in sorted(ranges):
        if begin != covered:
            problem = f"wrong schema: tensor {name!r} starts at byte {begin} of the data, expected {covered}"
            raise DamagedFileError(path, problem, rebuild)
        covered = end
    if size != 8 + length + covered:
        what = "truncated" if size < 8 + length + covered else "trailing bytes"
        problem = f"{what}: {size} bytes, its header describes {8 + length + covered}"
        raise DamagedFileError(path, problem, rebuild)
    return tensors
