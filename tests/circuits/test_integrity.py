"""Circuit files checked on every read against their JSON: the edges table truncated, empty, of a wrong
schema or other content; the JSON truncated, empty, not an object or without its edge count."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.io import (
    REBUILD,
    checked_circuit_meta,
    circuit_exists,
    circuit_files,
    read_circuit,
    write_circuit,
)
from ftcircuits.integrity import DamagedFileError, file_sha256


@pytest.fixture()
def stem(tmp_path, hand_built_circuit) -> Path:
    edges = hand_built_circuit({("a0.h1", "logits"): 2.0, ("m1", "logits"): 1.0}, background=None)
    write_circuit(tmp_path / "step-000300", edges, {"task": "addsub"})
    return tmp_path / "step-000300"


def damaged(stem: Path, reader=read_circuit) -> DamagedFileError:
    with pytest.raises(DamagedFileError) as caught:
        reader(stem)
    assert caught.value.rebuild == REBUILD
    return caught.value


def test_the_json_holds_the_edge_count_graph_shape_and_the_tables_sha256(stem, hand_built_circuit):
    graph = hand_built_circuit.graph
    edges_path, meta_path = circuit_files(stem)
    meta = json.loads(meta_path.read_text())
    assert meta["edges"] == graph.n_edges and meta["edges_in_circuit"] == 2
    assert meta["graph"] == {"sources": graph.n_sources, "destinations": graph.n_destinations}
    assert meta["edges_sha256"] == file_sha256(edges_path)
    edges, read_meta = read_circuit(stem, graph=graph)
    assert edges.height == graph.n_edges and read_meta == meta == checked_circuit_meta(stem)


@pytest.mark.parametrize("reader", [read_circuit, checked_circuit_meta])
def test_a_truncated_edges_file_is_named(stem, reader):
    edges_path, _ = circuit_files(stem)
    edges_path.write_bytes(edges_path.read_bytes()[: edges_path.stat().st_size // 2])
    error = damaged(stem, reader)
    assert error.path == edges_path
    if reader is read_circuit:
        assert error.problem.startswith("not a readable parquet file, truncated or overwritten (")
    else:  # the cheap check of a cache's finished unit: the bytes' hash
        assert error.problem == "its content does not match the sha256 in its JSON"


@pytest.mark.parametrize("reader", [read_circuit, checked_circuit_meta])
def test_an_empty_edges_file_is_named(stem, reader):
    edges_path, _ = circuit_files(stem)
    edges_path.write_bytes(b"")
    error = damaged(stem, reader)
    assert (error.path, error.problem) == (edges_path, "the file is empty (0 bytes)")


def test_an_edges_table_of_a_wrong_schema_is_named(stem):
    edges_path, _ = circuit_files(stem)
    frame = pl.read_parquet(edges_path)
    frame.with_columns(pl.col("score").cast(pl.Float64)).write_parquet(edges_path)
    assert damaged(stem).problem == "wrong schema: column 'score' is Float64, expected Float32"
    frame.drop("in_circuit").write_parquet(edges_path)
    error = damaged(stem)
    assert (error.path, error.problem) == (
        edges_path, "wrong schema: no column 'in_circuit' (has ['source', 'destination', 'score'])"
    )  # fmt: skip


@pytest.mark.parametrize("reader", [read_circuit, checked_circuit_meta])
def test_an_edges_table_of_other_content_mismatches_the_jsons_sha256(stem, reader):
    edges_path, _ = circuit_files(stem)
    frame = pl.read_parquet(edges_path)
    frame.with_columns(pl.col("in_circuit").reverse()).write_parquet(edges_path)
    error = damaged(stem, reader)
    assert (error.path, error.problem) == (edges_path, "its content does not match the sha256 in its JSON")


def test_an_edges_table_of_other_length_mismatches_the_jsons_edge_count(stem, hand_built_circuit):
    edges_path, meta_path = circuit_files(stem)
    meta = json.loads(meta_path.read_text())
    del meta["edges_sha256"]  # as an older version wrote it
    meta_path.write_text(json.dumps(meta))
    n = hand_built_circuit.graph.n_edges
    pl.read_parquet(edges_path).head(n - 1).write_parquet(edges_path)
    error = damaged(stem)
    assert (error.path, error.problem) == (edges_path, f"{n - 1} rows, its JSON says {n} edges")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"task": "add', "not valid JSON, truncated or overwritten (Unterminated string starting at: "
                            "line 1 column 10 (char 9))"),
        (b"", "the file is empty (0 bytes)"),
        (b"[1, 2]", "expected a JSON object, found list"),
        (b'{"task": "addsub"}', "no edge count ('edges') in it"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("reader", [read_circuit, checked_circuit_meta])
def test_a_damaged_json_is_named(stem, reader, content, problem):
    _, meta_path = circuit_files(stem)
    meta_path.write_bytes(content)
    error = damaged(stem, reader)
    assert (error.path, error.problem) == (meta_path, problem)


def test_a_json_of_other_content_mismatches_the_table(stem):
    edges_path, meta_path = circuit_files(stem)
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "edges_sha256": "0" * 64}))
    assert damaged(stem).problem == "its content does not match the sha256 in its JSON"
    meta_path.write_text(json.dumps({**meta, "graph": {"sources": 1, "destinations": 1}}))
    error = damaged(stem)
    shape = meta["graph"]
    assert (error.path, error.problem) == (
        edges_path, f"graph shape {shape}, its JSON says {{'sources': 1, 'destinations': 1}}"
    )  # fmt: skip


def test_an_old_json_without_hash_or_shape_is_read_on_its_other_checks(stem, hand_built_circuit):
    _, meta_path = circuit_files(stem)
    meta = json.loads(meta_path.read_text())
    old = {k: v for k, v in meta.items() if k not in ("edges_sha256", "graph")}
    meta_path.write_text(json.dumps(old))
    edges, read_meta = read_circuit(stem)
    assert edges.height == hand_built_circuit.graph.n_edges and read_meta == old
    assert checked_circuit_meta(stem) == old


def test_a_circuit_of_another_graph_is_named(stem, hand_built_circuit):
    other = Graph(layers=3, heads=2, kv_heads=2, parallel_blocks=False)
    edges_path, _ = circuit_files(stem)
    with pytest.raises(DamagedFileError) as caught:
        read_circuit(stem, graph=other)
    graph = hand_built_circuit.graph
    assert (caught.value.path, caught.value.problem) == (
        edges_path,
        f"{graph.n_edges} edges of shape {{'sources': {graph.n_sources}, 'destinations': "
        f"{graph.n_destinations}}}, the model's graph has {other.n_edges} of {{'sources': {other.n_sources}, "
        f"'destinations': {other.n_destinations}}}",
    )


@pytest.mark.parametrize("deleted", [0, 1])
def test_a_circuit_with_either_file_deleted_does_not_exist(stem, deleted):
    assert circuit_exists(stem)
    circuit_files(stem)[deleted].unlink()
    assert not circuit_exists(stem)
