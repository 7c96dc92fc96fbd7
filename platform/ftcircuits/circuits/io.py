"""The one circuit file format: ``<name>.edges.parquet`` + ``<name>.json``, readable without torch.

The edges table has one row per graph edge: ``source``, ``destination``
(node names such as ``a3.h5``, ``a4.h1<q>``, ``m2``, ``logits``), ``score``
(float32) and ``in_circuit`` (bool). The JSON holds the metadata (model,
checkpoint, task, method, metric, steps, examples, selection, faithfulness) and
what checks the table on every read: its row count (``edges``), the graph's
shape (``graph``: distinct sources and destinations) and the sha256 of the
parquet file's bytes (``edges_sha256``). A damaged file is a ``DamagedFileError``.
A JSON written before the hash (no ``edges_sha256``) is still read, checked on
the rest: such files were complete when written, and recomputing every old
circuit for want of a hash would cost hours of GPU time for no gain.

The JSON may also hold ``node_scores`` ({source node: total effect}) and ``node_curve`` (the node-level
faithfulness curve, ``circuits.nodes``); files written before them lack them and stay valid:
``node_scores_of`` reads the node scores of either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from ftcircuits.integrity import (
    DamagedFileError,
    checked_size,
    file_sha256,
    read_json_checked,
    read_parquet_checked,
)
from ftcircuits.options import AttributionMethod, choices
from ftcircuits.paths import atomic_file

if TYPE_CHECKING:
    import torch

    from ftcircuits.circuits.graph import Graph

EDGES_SUFFIX = ".edges.parquet"
META_SUFFIX = ".json"
EDGES_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String,
    "destination": pl.String,
    "score": pl.Float32,
    "in_circuit": pl.Boolean,
}
NODE_SCHEMA: dict[str, pl.DataType] = {"node": pl.String, "score": pl.Float64}
# the methods whose node score is the sum of the node's edge scores (all but exact)
GRADIENT_METHODS = tuple(method for method in choices(AttributionMethod) if method != "exact")
REBUILD = "rerun the job that wrote it (python -m jobs.circuits ...), or delete it and rerun"


def circuit_files(path_stem: Path) -> tuple[Path, Path]:
    """Return (edges parquet, JSON) of the circuit at ``path_stem``."""
    stem = Path(path_stem)
    return stem.with_name(stem.name + EDGES_SUFFIX), stem.with_name(stem.name + META_SUFFIX)


def graph_shape(edges: pl.DataFrame) -> dict[str, int]:
    """Return the graph's shape an edges table holds: its distinct sources and destinations (every source
    reaches the logits, every destination has an incoming edge), so ``Graph.n_sources, n_destinations``."""
    return {"sources": edges["source"].n_unique(), "destinations": edges["destination"].n_unique()}


def edges_table(scores: torch.Tensor, circuit: torch.Tensor, graph: Graph) -> pl.DataFrame:
    """Return the edges table of a score matrix and circuit mask over ``graph`` (on any device)."""
    names = graph.edge_names()
    return pl.DataFrame(
        {
            "source": [s for s, _ in names],
            "destination": [d for _, d in names],
            "score": scores[graph.edge_mask_on(scores.device)].float().cpu().numpy(),
            "in_circuit": circuit[graph.edge_mask_on(circuit.device)].cpu().numpy(),
        },
        schema=EDGES_SCHEMA,
    )


def circuit_mask(edges: pl.DataFrame, graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (scores float32, circuit bool) ``[n_sources, n_destinations]`` of an edges table over ``graph``.

    Both are on the CPU, where the table's data is: move them with ``.to(device)``. Rows are matched
    to the graph's edges by name, so their order does not matter; ValueError if the table does not
    hold exactly the graph's edges. Inverse of :func:`edges_table`.
    """
    import torch  # here, not at the top: this module reads circuits without torch

    names = graph.edge_names()
    expected = pl.DataFrame(
        {"source": [s for s, _ in names], "destination": [d for _, d in names]},
        schema={"source": pl.String, "destination": pl.String},
    ).with_row_index("position")
    if edges.height != len(names) or edges.select("source", "destination").is_duplicated().any():
        rows = edges.height
        raise ValueError(f"edges table has {rows} rows (or duplicates); the graph has {len(names)} edges")
    joined = expected.join(edges, on=["source", "destination"], how="left").sort("position")
    if joined["in_circuit"].null_count():
        raise ValueError("edges table does not belong to the graph: some graph edges are missing from it")
    mask = graph.edge_mask_on("cpu")
    scores = torch.zeros(mask.shape, dtype=torch.float32, device="cpu")
    circuit = torch.zeros(mask.shape, dtype=torch.bool, device="cpu")
    scores[mask] = torch.from_numpy(joined["score"].cast(pl.Float32).to_numpy().copy())
    circuit[mask] = torch.from_numpy(joined["in_circuit"].to_numpy().copy())
    return scores, circuit


def write_circuit(path_stem: Path, edges: pl.DataFrame, metadata: dict) -> Path:
    """Write ``<stem>.edges.parquet`` then ``<stem>.json`` atomically; return the JSON path.

    The JSON is written last, so its presence means the circuit is complete; it holds the table's row
    count, graph shape and the sha256 of the parquet file, which every read checks.
    """
    edges_path, meta_path = circuit_files(path_stem)
    with atomic_file(edges_path) as tmp:
        edges.write_parquet(tmp)
        sha256 = file_sha256(tmp)
    meta = {
        **metadata,
        "edges": edges.height,
        "edges_in_circuit": int(edges["in_circuit"].sum()),
        "graph": graph_shape(edges),
        "edges_sha256": sha256,
    }
    with atomic_file(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return meta_path


def circuit_exists(path_stem: Path) -> bool:
    """Return whether a complete circuit was written at ``path_stem``: its JSON (written last) and its edges
    table are there (whether they are whole is for ``checked_circuit_meta`` to say)."""
    return all(path.is_file() for path in circuit_files(path_stem))


def _checked_meta(path_stem: Path, rebuild: str) -> dict:
    """Return the circuit's JSON, checked to be an object with an integer edge count."""
    _, meta_path = circuit_files(path_stem)
    meta = read_json_checked(meta_path, rebuild)
    if not isinstance(meta.get("edges"), int):
        raise DamagedFileError(meta_path, "no edge count ('edges') in it", rebuild)
    return meta


_VERIFIED: set[tuple[str, int, int, str]] = set()  # (edges file, size, mtime_ns, sha256) checked whole


def checked_circuit_meta(path_stem: Path, rebuild: str = REBUILD) -> dict:
    """Return a circuit's metadata after checking both files without parsing the table when the JSON holds
    its sha256 (cheap, for a cache's finished units); a JSON without it gets the full ``read_circuit``."""
    edges_path, _ = circuit_files(path_stem)
    meta = _checked_meta(path_stem, rebuild)
    if not isinstance(meta.get("edges_sha256"), str):
        return read_circuit(path_stem, rebuild)[1]
    stat = checked_size(edges_path, rebuild).stat()
    verdict = (str(edges_path.resolve()), stat.st_size, stat.st_mtime_ns, meta["edges_sha256"])
    if verdict not in _VERIFIED:  # a stage checks its finished units twice: before Ray starts, and in it
        if file_sha256(edges_path) != meta["edges_sha256"]:
            raise DamagedFileError(edges_path, "its content does not match the sha256 in its JSON", rebuild)
        _VERIFIED.add(verdict)
    return meta


def read_circuit(
    path_stem: Path, rebuild: str = REBUILD, graph: Graph | None = None
) -> tuple[pl.DataFrame, dict]:
    """Read a circuit's edges table and metadata, checked: the JSON valid, the table readable, of
    ``EDGES_SCHEMA``, with the JSON's row count, graph shape and sha256 (where it has them) and, given
    ``graph``, that graph's shape. DamagedFileError names the damaged file and ``rebuild``."""
    edges_path, meta_path = circuit_files(path_stem)
    if not meta_path.is_file():
        raise FileNotFoundError(f"no circuit at {path_stem}: {meta_path.name} is missing")
    meta = _checked_meta(path_stem, rebuild)
    edges = read_parquet_checked(edges_path, rebuild, EDGES_SCHEMA)
    if edges.height != meta["edges"]:
        raise DamagedFileError(
            edges_path, f"{edges.height} rows, its JSON says {meta['edges']} edges", rebuild
        )
    sha256 = meta.get("edges_sha256")
    if isinstance(sha256, str) and file_sha256(edges_path) != sha256:
        raise DamagedFileError(edges_path, "its content does not match the sha256 in its JSON", rebuild)
    shape = graph_shape(edges)
    if "graph" in meta and meta["graph"] != shape:
        raise DamagedFileError(edges_path, f"graph shape {shape}, its JSON says {meta['graph']}", rebuild)
    if graph is not None:
        expected = {"sources": graph.n_sources, "destinations": graph.n_destinations}
        if shape != expected or edges.height != graph.n_edges:
            raise DamagedFileError(
                edges_path,
                f"{edges.height} edges of shape {shape}, the model's graph has {graph.n_edges} of {expected}",
                rebuild,
            )
    return edges, meta


def node_scores_of(meta: dict, edges: pl.DataFrame) -> pl.DataFrame | None:
    """Return a circuit's node scores as a table (``node``, ``score``; source nodes in graph order): the
    JSON's ``node_scores``, or for a file written before them by a gradient method, each source's sum of
    its edge scores (what those methods' node scores are, here from the table's float32 scores). None for
    an older ``exact`` circuit: its node scores (whole-node patches) cannot be rebuilt from its edges."""
    stored = meta.get("node_scores")
    if stored is not None:
        if not isinstance(stored, dict) or not all(isinstance(v, int | float) for v in stored.values()):
            raise ValueError("the circuit's JSON 'node_scores' is not an object of node name: number")
        return pl.DataFrame({"node": list(stored), "score": list(stored.values())}, schema=NODE_SCHEMA)
    if meta.get("attribution", {}).get("method") not in GRADIENT_METHODS:
        return None
    return (
        edges.group_by("source", maintain_order=True)
        .agg(pl.col("score").cast(pl.Float64).sum())
        .rename({"source": "node"})
    )
