"""The one circuit file format: ``<name>.edges.parquet`` + ``<name>.json``, readable without torch.

The edges table has one row per graph edge: ``source``, ``destination``
(node names such as ``a3.h5``, ``a4.h1<q>``, ``m2``, ``logits``), ``score``
(float32) and ``in_circuit`` (bool). The JSON holds the metadata (model,
checkpoint, task, method, metric, steps, examples, selection, faithfulness).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ftcircuits.paths import atomic_file

EDGES_SUFFIX = ".edges.parquet"
META_SUFFIX = ".json"


def edges_table(scores, circuit, graph) -> pl.DataFrame:
    """Return the edges table of a score matrix and circuit mask over ``graph``."""
    mask = graph.edge_mask
    names = graph.edge_names()
    return pl.DataFrame(
        {
            "source": [s for s, _ in names],
            "destination": [d for _, d in names],
            "score": scores[mask].float().cpu().numpy(),
            "in_circuit": circuit[mask].cpu().numpy(),
        },
        schema={"source": pl.String, "destination": pl.String, "score": pl.Float32, "in_circuit": pl.Boolean},
    )


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


def read_circuit(path_stem: Path) -> tuple[pl.DataFrame, dict]:
    """Read a circuit's edges table and metadata."""
    stem = Path(path_stem)
    meta_path = stem.with_name(stem.name + META_SUFFIX)
    if not meta_path.is_file():
        raise FileNotFoundError(f"no circuit at {stem}: {meta_path.name} is missing")
    return pl.read_parquet(stem.with_name(stem.name + EDGES_SUFFIX)), json.loads(meta_path.read_text())
