"""A synthetic run's checkpoint circuits: random edge scores that drift from checkpoint to checkpoint, written
as real circuit files with a summary table (``<out>/step-XXXXXX.*``, ``summary.parquet``), so the explorer
and the analysis can be tried and timed at any model's graph size without a model."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.io import edges_table, write_circuit
from ftcircuits.circuits.nodes import node_score_names, outgoing_sums
from ftcircuits.circuits.selection import Selection, select_circuit
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import checkpoint_name
from ftcircuits.study.over_run import SUMMARY_FILE

DEFAULT_SELECTION = Selection()


def synthetic_scores(graph: Graph, checkpoints: int, drift: float, seed: int) -> list[torch.Tensor]:
    """Return ``checkpoints`` score matrices ``[n_sources, n_destinations]`` (zero off the graph's edges):
    heavy-tailed at the base, each next one the previous plus ``drift`` times fresh noise of its scale."""
    generator = torch.Generator().manual_seed(seed)
    mask = graph.edge_mask_on("cpu")

    def noise() -> torch.Tensor:
        normal = torch.randn(mask.shape, generator=generator)
        return normal * torch.rand(mask.shape, generator=generator) ** 3  # heavy-tailed magnitudes

    scores = [noise()]
    for _ in range(checkpoints - 1):
        scores.append(scores[-1] + drift * noise())
    return [(s * mask).float() for s in scores]


def write_synthetic_circuits(
    out: Path,
    graph: Graph,
    steps: list[int],
    selection: Selection = DEFAULT_SELECTION,
    drift: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write a circuit file per step (random scores, ``synthetic_scores``; the circuit chosen by
    ``selection``) and the run's summary table into ``out``; return ``out``."""
    out = Path(out)
    rows = []
    scores = synthetic_scores(graph, len(steps), drift, seed)
    for step, matrix in zip(steps, scores, strict=True):
        rule = selection
        circuit = select_circuit(matrix, graph, rule.method, budget=rule.budget, prune=rule.prune)
        key = checkpoint_name(step)
        meta = {
            "model": "synthetic",
            "selection": {"method": selection.method, "budget": selection.budget, "prune": selection.prune},
            "unit": {"key": key, "model": "checkpoint", "step": step, "ratio": 0.0},
            "synthetic": {"seed": seed, "drift": drift},
            "node_scores": node_score_names(outgoing_sums(matrix, graph), graph),  # as a gradient method's
        }
        write_circuit(out / key, edges_table(matrix, circuit, graph), meta)
        rows.append({"key": key, "weights": "synthetic", "model": "checkpoint", "step": step, "ratio": 0.0})
    with atomic_file(out / SUMMARY_FILE) as tmp:
        pl.DataFrame(rows).write_parquet(tmp)
    return out
