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
from ftcircuits.circuits.nodes import (
    DEFAULT_NODE_BUDGETS,
    exact_node_scores,
    node_faithfulness_curve,
    node_score_names,
    outgoing_sums,
)
from ftcircuits.circuits.pairs import PairBatch, longest_prompt, pair_batches
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.selection import Selection, nodes_in_circuit, select_circuit
from ftcircuits.models.loader import LoadedModel


@dataclass
class DiscoveredCircuit:
    """Edge scores (mean over examples), the selected circuit, its metrics and nodes; node scores (each
    source node's total effect, mean over examples, ``circuits.nodes``) and the node-level curve.

    ``scores``, ``circuit`` and ``node_scores`` are on the model's device (``edges_table`` writes them from
    any device).
    """

    graph: Graph
    scores: torch.Tensor
    circuit: torch.Tensor
    metrics: dict
    nodes: list[str]
    curve: dict | None = None
    batch: BatchChoice | None = None  # the batch it ran at, and the memory arithmetic behind it
    node_scores: torch.Tensor | None = None  # [n_sources]
    node_curve: dict | None = None


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

    Node scores come with every circuit: the edge scores' row sums for the gradient methods, one more
    pass per node for ``exact``. With ``curve``, also the faithfulness curves over edge budgets 0.1%..100%
    and over node budgets 2%..100% (``DEFAULT_NODE_BUDGETS``). ``batch_size`` is a
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
    exact = attribution.method == "exact"
    node_scores = torch.zeros(graph.n_sources, dtype=probe.score_dtype, device=device)
    for index, batch in enumerate(batches):
        scores += attribute_batch(probe, batch, attribution, means).to(device)
        if exact:
            node_scores += exact_node_scores(probe, batch, attribution, means).to(device)
        if on_batch is not None:
            on_batch(index + 1, len(batches))
    scores /= items.height
    node_scores = node_scores / items.height if exact else outgoing_sums(scores, graph)
    circuit = select_circuit(scores, graph, selection.method, budget=selection.budget, prune=selection.prune)
    metrics = circuit_evaluation(probe, batches, circuit, attribution.metric, intervention, means)
    nodes = sorted(nodes_in_circuit(circuit, graph))
    metrics |= {
        "score_std": float(scores[graph.edge_mask_on(device)].std()),  # the spread (0: input-blind)
        "edges_in_circuit": int(circuit.sum()),
        "edges_total": graph.n_edges,
        "nodes_in_circuit": len(nodes),
    }
    budget_curve = node_curve = None
    if curve:
        budget_curve = faithfulness_curve(
            probe, batches, scores, attribution.metric, DEFAULT_BUDGETS, selection.method, intervention, means
        )
        node_curve = node_faithfulness_curve(
            probe, batches, node_scores, attribution.metric, DEFAULT_NODE_BUDGETS, intervention, means
        )
    return DiscoveredCircuit(
        graph, scores, circuit, metrics, nodes, budget_curve, choice, node_scores, node_curve
    )


def circuit_metadata(
    loaded: LoadedModel, attribution: AttributionConfig, selection: Selection,
    found: DiscoveredCircuit | None = None, **extra,
) -> dict:  # fmt: skip
    """Return the JSON metadata of a circuit file (the attribution's fields include the intervention, which
    scored the edges and evaluated the circuit); with ``found``, its ``node_scores`` ({node: score}) and,
    when computed, its ``node_curve``. Readers take files without them (``io.node_scores_of``)."""
    nodes = {}
    if found is not None and found.node_scores is not None:
        nodes["node_scores"] = node_score_names(found.node_scores, found.graph)
    if found is not None and found.node_curve is not None:
        nodes["node_curve"] = found.node_curve
    return {
        "model": loaded.source,
        "architecture": loaded.architecture.family,
        "attribution": asdict(attribution),
        "selection": asdict(selection),
        **nodes,
        **extra,
    }
