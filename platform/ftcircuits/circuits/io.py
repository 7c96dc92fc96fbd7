"""The one circuit file format: ``<name>.edges.parquet`` + ``<name>.json``, readable without torch.

The edges table has one row per graph edge: ``source``, ``destination``
(node names such as ``a3.h5``, ``a4.h1<q>``, ``m2``, ``logits``), ``score``
(float32) and ``in_circuit`` (bool). The JSON holds the metadata (model,
checkpoint, task, method, metric, steps, examples, selection, faithfulness).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from ftcircuits.paths import atomic_file

if TYPE_CHECKING:
    import torch

    from ftcircuits.circuits.graph import Graph

EDGES_SUFFIX = ".edges.parquet"
META_SUFFIX = ".json"


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
        schema={"source": pl.String, "destination": pl.String, "score": pl.Float32, "in_circuit": pl.Boolean},
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

    The JSON is written last, so its presence means the circuit is complete.
    """
    stem = Path(path_stem)
    with atomic_file(stem.with_name(stem.name + EDGES_SUFFIX)) as tmp:
        edges.write_parquet(tmp)
    meta = {**metadata, "edges": edges.height, "edges_in_circuit": int(edges["in_circuit"].sum())}
    meta_path = stem.with_name(stem.name + META_SUFFIX)
    with atomic_file(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return meta_path


def circuit_exists(path_stem: Path) -> bool:
    """Return whether a complete circuit was written at ``path_stem`` (its JSON is written last)."""
    stem = Path(path_stem)
    return stem.with_name(stem.name + META_SUFFIX).is_file()


def read_circuit(path_stem: Path) -> tuple[pl.DataFrame, dict]:
    """Read a circuit's edges table and metadata."""
    stem = Path(path_stem)
    meta_path = stem.with_name(stem.name + META_SUFFIX)
    if not meta_path.is_file():
        raise FileNotFoundError(f"no circuit at {stem}: {meta_path.name} is missing")
    return pl.read_parquet(stem.with_name(stem.name + EDGES_SUFFIX)), json.loads(meta_path.read_text())
