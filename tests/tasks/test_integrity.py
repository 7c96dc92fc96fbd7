"""Dataset files checked on every read: items, perturbed splits and the manifest, each truncated, empty,
of a wrong schema or with other content; the reader names the file, what is wrong and how to rebuild it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import polars as pl
import pytest

from ftcircuits.integrity import DamagedFileError
from ftcircuits.models.loader import load_tokenizer
from ftcircuits.tasks import build_dataset, perturbed_circuit_splits, read_items, read_perturbed, task_family
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import (
    ITEMS_FILE,
    ITEMS_SCHEMA,
    MANIFEST_FILE,
    PERTURBED_SCHEMA,
    content_hash,
    rebuild_hint,
    write_dataset,
)
from ftcircuits.tasks.spec import TaskSpec

PERTURBED_FILE = "perturbed/p0.30.parquet"


@pytest.fixture(scope="module")
def frames(tokenizer) -> tuple[pl.DataFrame, pl.DataFrame]:
    family = task_family("addsub", range=100)
    items, _ = build_dataset(family, tokenizer, 100, seed=0)
    return items, perturbed_circuit_splits(items, family, tokenizer, [0.3], seed=0)[0.3]


@pytest.fixture()
def dataset(tmp_path, frames) -> Path:
    items, perturbed = frames
    return write_dataset(tmp_path / "addsub-100", items, {"task": "addsub"}, {0.3: perturbed})


def read(directory: Path, name: str) -> pl.DataFrame:
    return read_items(directory) if name == ITEMS_FILE else read_perturbed(directory, 0.3)


def damaged(directory: Path, name: str, reader=read) -> DamagedFileError:
    with pytest.raises(DamagedFileError) as caught:
        reader(directory, name)
    error = caught.value
    assert str(error) == f"{error.path}: {error.problem}; to rebuild it: {error.rebuild}"
    assert error.rebuild == rebuild_hint(directory)  # no rebuild command in a hand-written manifest
    return error


def test_the_schemas_are_those_the_builder_writes(frames):
    items, perturbed = frames
    assert dict(items.schema) == ITEMS_SCHEMA and dict(perturbed.schema) == PERTURBED_SCHEMA


@pytest.mark.parametrize("name", [ITEMS_FILE, PERTURBED_FILE])
def test_a_truncated_file_is_named(dataset, name):
    path = dataset / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    error = damaged(dataset, name)
    assert error.path == path
    assert error.problem.startswith("not a readable parquet file, truncated or overwritten (")


@pytest.mark.parametrize("name", [ITEMS_FILE, PERTURBED_FILE])
def test_an_empty_file_is_named(dataset, name):
    (dataset / name).write_bytes(b"")
    error = damaged(dataset, name)
    assert (error.path, error.problem) == (dataset / name, "the file is empty (0 bytes)")


@pytest.mark.parametrize("name", [ITEMS_FILE, PERTURBED_FILE])
def test_a_missing_column_or_another_dtype_is_a_wrong_schema(dataset, name):
    frame = pl.read_parquet(dataset / name)
    frame.drop("kind").write_parquet(dataset / name)
    error = damaged(dataset, name)
    assert error.problem == f"wrong schema: no column 'kind' (has {frame.drop('kind').columns})"
    frame.with_columns(pl.col("id").cast(pl.String)).write_parquet(dataset / name)
    assert damaged(dataset, name).problem == "wrong schema: column 'id' is String, expected Int64"


@pytest.mark.parametrize("name", [ITEMS_FILE, PERTURBED_FILE])
def test_a_valid_parquet_of_other_content_mismatches_the_manifests_hash(dataset, name):
    frame = pl.read_parquet(dataset / name)
    frame.with_columns(pl.col("answer").reverse()).write_parquet(dataset / name)
    error = damaged(dataset, name)
    assert (error.path, error.problem) == (dataset / name, "its content does not match the manifest's sha256")


@pytest.mark.parametrize("name", [ITEMS_FILE, PERTURBED_FILE])
def test_a_manifest_without_file_hashes_falls_back_to_the_rows_hash(dataset, frames, name):
    manifest = json.loads((dataset / MANIFEST_FILE).read_text())
    del manifest["items_sha256"], manifest["perturbed"]["0.30"]["sha256"]
    (dataset / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert read_items(dataset).equals(frames[0]) and read_perturbed(dataset, 0.3).equals(frames[1])
    frame = pl.read_parquet(dataset / name)
    frame.with_columns(pl.col("answer").reverse()).write_parquet(dataset / name)
    error = damaged(dataset, name)
    assert (error.path, error.problem) == (
        dataset / name,
        "its rows do not match the manifest's content_hash",
    )


def read_manifest_of(directory: Path, name: str) -> pl.DataFrame:
    return read_items(directory)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"task": "add', "not valid JSON, truncated or overwritten (Unterminated string starting at: "
                            "line 1 column 10 (char 9))"),
        (b"", "the file is empty (0 bytes)"),
        (b"[1, 2]", "expected a JSON object, found list"),
        (b'{"task": "addsub"}', "no content_hash of the items in it"),
    ],
)  # fmt: skip
def test_a_damaged_manifest_is_named(dataset, content, problem):
    (dataset / MANIFEST_FILE).write_bytes(content)
    error = damaged(dataset, ITEMS_FILE, read_manifest_of)
    assert (error.path, error.problem) == (dataset / MANIFEST_FILE, problem)


def test_a_manifest_of_other_content_mismatches_the_files(dataset):
    manifest = json.loads((dataset / MANIFEST_FILE).read_text())
    manifest["items_sha256"] = "0" * 64
    manifest["perturbed"]["0.30"]["sha256"] = "1" * 64
    (dataset / MANIFEST_FILE).write_text(json.dumps(manifest))
    for name in (ITEMS_FILE, PERTURBED_FILE):  # which of the two is wrong, no file can tell: both named
        error = damaged(dataset, name)
        assert (error.path, error.problem) == (
            dataset / name,
            "its content does not match the manifest's sha256",
        )


def test_a_perturbed_entry_without_its_file_is_a_damaged_manifest(dataset):
    manifest = json.loads((dataset / MANIFEST_FILE).read_text())
    manifest["perturbed"]["0.30"] = {"requested": 6}
    (dataset / MANIFEST_FILE).write_text(json.dumps(manifest))
    error = damaged(dataset, PERTURBED_FILE)
    assert (error.path, error.problem) == (
        dataset / MANIFEST_FILE,
        "its entry of perturbed ratio 0.30 lacks a file or hash",
    )


def test_the_hint_of_a_made_dataset_is_the_command_that_rebuilds_it_the_same(tmp_path, monkeypatch):
    spec = TaskSpec(name="addsub", range=100, size=60)
    directory, _ = make_task_dataset(spec, load_tokenizer("tiny"), "tiny", tmp_path / "data", [0.5])
    before = read_items(directory)
    (directory / ITEMS_FILE).write_bytes((directory / ITEMS_FILE).read_bytes()[:3000])
    with pytest.raises(DamagedFileError) as caught:
        read_items(directory)
    command = caught.value.rebuild
    out = shlex.quote(f"out={tmp_path / 'data'}")
    assert command == (
        'python -m jobs.make_data --set \'tasks=[{"name": "addsub", "range": 100, "size": 60, '
        f'"seed": 0, "circuit_share": 0.2}}]\' --set model=tiny --set {out} --set \'perturb_ratios=[0.5]\''
    )
    from jobs import make_data

    make_data.main(shlex.split(command)[3:])
    assert read_items(directory).equals(before) and content_hash(read_items(directory)) == content_hash(
        before
    )
    assert read_perturbed(directory, 0.5).height == before.filter(pl.col("split") == "circuit").height
