"""Discover a circuit on a dataset split: pair batches, attribution, selection, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import polars as pl
import torch

from ftcircuits.circuits.attribution import AttributionConfig, attribute_batch
from ftcircuits.circuits.evaluation import DEFAULT_BUDGETS, circuit_evaluation, faithfulness_curve
from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.interventions import source_means
from ftcircuits.circuits.memory import BatchChoice, circuit_batch
from ftcircuits.circuits.pairs import PairBatch, longest_prompt, pair_batches
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.selection import Selection, nodes_in_circuit, select_circuit
from ftcircuits.models.loader import LoadedModel


@dataclass
class DiscoveredCircuit:
    """Edge scores (mean over examples), the selected circuit, its metrics and nodes.

    ``scores`` and ``circuit`` are on the model's device (``edges_table`` writes them from any device).
    """

    graph: Graph
    scores: torch.Tensor
    circuit: torch.Tensor
    metrics: dict
    nodes: list[str]
    curve: dict | None = None
    batch: BatchChoice | None = None  # the batch it ran at, and the memory arithmetic behind it


def discovery_batches(
    loaded: LoadedModel, items: pl.DataFrame, attribution: AttributionConfig, batch_size: int | str
) -> tuple[list[PairBatch], BatchChoice]:
    """Return ``items`` as pair batches on the model's device, at ``batch_size`` or, for ``"auto"``, the
    largest batch the device's free memory holds; raise BatchSizeError before any model work when an
    explicit batch cannot fit."""
    device = next(loaded.model.parameters()).device
    dtype = next(loaded.model.parameters()).dtype
    length = longest_prompt(loaded.tokenizer, items)
    choice = circuit_batch(
        loaded.architecture, batch_size, length, attribution.stacked, dtype, device, items.height
    )
    need_corrupted = attribution.metric == "logit_diff"
    return pair_batches(loaded.tokenizer, items, choice.batch, device, need_corrupted), choice


def discover_circuit(
    loaded: LoadedModel,
    items: pl.DataFrame,
    attribution: AttributionConfig,
    selection: Selection,
    batch_size: int | str = 32,
    on_batch: Callable[[int, int], None] | None = None,
    curve: bool = False,
) -> DiscoveredCircuit:
    """Score every edge on ``items`` (mean over examples), select a circuit, evaluate it.

    With ``curve``, also the faithfulness curve over edge budgets 0.1%..100%. ``batch_size`` is a
    number of pairs or ``"auto"`` (see ``discovery_batches``). The attribution's intervention is also the
    evaluation's; for ``mean`` the sources' means over ``items`` are computed once, first.
    """
    device = next(loaded.model.parameters()).device
    batches, choice = discovery_batches(loaded, items, attribution, batch_size)
    probe = ModelProbe(loaded.model, loaded.architecture)
    graph = probe.graph
    intervention = attribution.intervention
    means = source_means(probe, batches) if intervention == "mean" else None
    scores = torch.zeros(graph.n_sources, graph.n_destinations, dtype=probe.score_dtype, device=device)
    for index, batch in enumerate(batches):
        scores += attribute_batch(probe, batch, attribution, means).to(device)
        if on_batch is not None:
            on_batch(index + 1, len(batches))
    scores /= items.height
    circuit = select_circuit(scores, graph, selection.method, budget=selection.budget, prune=selection.prune)
    metrics = circuit_evaluation(probe, batches, circuit, attribution.metric, intervention, means)
    nodes = sorted(nodes_in_circuit(circuit, graph))
    metrics |= {
        "score_std": float(scores[graph.edge_mask_on(device)].std()),  # the spread (0: input-blind)
        "edges_in_circuit": int(circuit.sum()),
        "edges_total": graph.n_edges,
        "nodes_in_circuit": len(nodes),
    }
    budget_curve = None
    if curve:
        budget_curve = faithfulness_curve(
            probe, batches, scores, attribution.metric, DEFAULT_BUDGETS, selection.method, intervention, means
        )
    return DiscoveredCircuit(graph, scores, circuit, metrics, nodes, budget_curve, choice)


def circuit_metadata(
    loaded: LoadedModel, attribution: AttributionConfig, selection: Selection, **extra
) -> dict:
    """Return the JSON metadata of a circuit file (the attribution's fields include the intervention, which
    scored the edges and evaluated the circuit)."""
    return {
        "model": loaded.source,
        "architecture": loaded.architecture.family,
        "attribution": asdict(attribution),
        "selection": asdict(selection),
        **extra,
    }
