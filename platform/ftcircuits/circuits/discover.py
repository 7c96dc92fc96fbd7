"""Discover a circuit on a dataset split: pairs to batches, attribution, selection, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import polars as pl
import torch
from transformers import PreTrainedTokenizerBase

from ftcircuits.circuits.attribution import AttributionConfig, ModelProbe, PairBatch, attribute_batch
from ftcircuits.circuits.evaluation import DEFAULT_BUDGETS, circuit_evaluation, faithfulness_curve
from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.selection import nodes_in_circuit, select_circuit
from ftcircuits.finetune.encoding import pad_prompts, prompt_ids, require_answer_ids
from ftcircuits.models.loader import LoadedModel


class PairLengthError(ValueError):
    """A clean and a corrupted prompt have different token lengths."""


def pair_batches(
    tokenizer: PreTrainedTokenizerBase,
    items: pl.DataFrame,
    batch_size: int,
    device: torch.device | str = "cpu",
    need_corrupted_answers: bool = False,
) -> list[PairBatch]:
    """Return right-padded batches of (clean, corrupted) pairs; check everything before any model work."""
    clean = prompt_ids(tokenizer, items["prompt"].to_list())
    corrupted = prompt_ids(tokenizer, items["corrupted_prompt"].to_list())
    for index, (a, b) in enumerate(zip(clean, corrupted, strict=True)):
        if len(a) != len(b):
            raise PairLengthError(
                f"item {index}: clean prompt has {len(a)} tokens but corrupted prompt has {len(b)}: "
                f"{items['prompt'][index]!r} vs {items['corrupted_prompt'][index]!r}"
            )
    answers = require_answer_ids(tokenizer, items["prompt"].to_list(), items["answer"].to_list())
    other = None
    if need_corrupted_answers:
        if items["corrupted_answer"].null_count():
            raise ValueError("metric needs a one-token corrupted answer for every item; some are missing")
        other = require_answer_ids(
            tokenizer, items["corrupted_prompt"].to_list(), items["corrupted_answer"].to_list()
        )
    batches = []
    for start in range(0, len(clean), batch_size):
        rows = slice(start, start + batch_size)
        padded = pad_prompts(clean[rows], tokenizer.pad_token_id, "right")
        padded_corrupted = pad_prompts(corrupted[rows], tokenizer.pad_token_id, "right")
        batches.append(
            PairBatch(
                padded,
                padded_corrupted.input_ids,
                torch.tensor(answers[rows]),
                None if other is None else torch.tensor(other[rows]),
            ).to(device)
        )
    return batches


@dataclass(frozen=True)
class Selection:
    method: str = "topn"
    fraction: float = 0.05
    prune: bool = True


@dataclass
class DiscoveredCircuit:
    """Edge scores (mean over examples), the selected circuit, its metrics and nodes."""

    graph: Graph
    scores: torch.Tensor
    circuit: torch.Tensor
    metrics: dict
    nodes: list[str]
    curve: dict | None = None


def discover_circuit(
    loaded: LoadedModel,
    items: pl.DataFrame,
    attribution: AttributionConfig,
    selection: Selection,
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
    curve: bool = False,
) -> DiscoveredCircuit:
    """Score every edge on ``items`` (mean over examples), select a circuit, evaluate it.

    With ``curve``, also the faithfulness curve over edge budgets 0.1%..100%.
    """
    device = next(loaded.model.parameters()).device
    batches = pair_batches(
        loaded.tokenizer, items, batch_size, device, need_corrupted_answers=attribution.metric == "logit_diff"
    )
    probe = ModelProbe(loaded.model, loaded.architecture)
    scores = torch.zeros(probe.graph.n_sources, probe.graph.n_destinations, dtype=probe.score_dtype)
    for index, batch in enumerate(batches):
        scores += attribute_batch(probe, batch, attribution).cpu()
        if on_batch is not None:
            on_batch(index + 1, len(batches))
    scores /= items.height
    graph = probe.graph
    circuit = select_circuit(
        scores, graph, selection.method, fraction=selection.fraction, prune=selection.prune
    )
    metrics = circuit_evaluation(probe, batches, circuit.to(device), attribution.metric)
    nodes = sorted(nodes_in_circuit(circuit, graph))
    metrics |= {
        "edges_in_circuit": int(circuit.sum()),
        "edges_total": graph.n_edges,
        "nodes_in_circuit": len(nodes),
    }
    budget_curve = None
    if curve:
        budget_curve = faithfulness_curve(
            probe, batches, scores.to(device), attribution.metric, DEFAULT_BUDGETS, selection.method
        )
    return DiscoveredCircuit(graph, scores, circuit, metrics, nodes, budget_curve)


def circuit_metadata(
    loaded: LoadedModel, attribution: AttributionConfig, selection: Selection, **extra
) -> dict:
    """Return the JSON metadata of a circuit file."""
    return {
        "model": loaded.source,
        "architecture": loaded.architecture.family,
        "attribution": asdict(attribution),
        "selection": asdict(selection),
        **extra,
    }
