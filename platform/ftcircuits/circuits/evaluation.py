"""Evaluating a circuit: every non-circuit edge patched with corrupted activations, in one pass.

In a clean forward pass each destination v reads its input plus
``sum over removed edges (u, v) of z_u(corrupted) - z_u(current)``, where
z_u(current) is u's output in this very (patched) pass. So the full circuit
reproduces the clean model exactly and the empty circuit the corrupted one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from ftcircuits.circuits.attribution import ModelProbe, PairBatch
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.selection import select_circuit


@torch.no_grad()
def patched_logits(probe: ModelProbe, batch: PairBatch, circuit: torch.Tensor) -> torch.Tensor:
    """Return last-position logits of the clean input with every non-circuit edge patched."""
    graph, arch = probe.graph, probe.arch
    corrupted, _ = probe.source_outputs(batch.clean, batch.corrupted_ids)
    removed = (graph.edge_mask & ~circuit.to(graph.edge_mask.device)).to(corrupted)
    if not removed.any():
        return probe.run(batch.clean)
    current: list[torch.Tensor] = []
    shape = batch.clean.input_ids.shape
    stash: dict = {}

    def difference(count: int) -> torch.Tensor:
        return corrupted[:, :, :count] - torch.cat(current, dim=2)[:, :, :count]

    def record(tensor: torch.Tensor) -> None:
        current.append(tensor.to(corrupted.dtype).reshape(*shape, -1, tensor.shape[-1]))

    def shifted_input(destination: int, reads: int):
        def hook(module, args):
            weights = removed[:reads, destination]
            if not weights.any():
                return None
            delta = torch.einsum("btsd,s->btd", difference(reads), weights)
            return (args[0] + delta.reshape(args[0].shape).to(args[0].dtype), *args[1:])

        return hook

    def per_head_projection(layer: int, index: int, start: int):
        projection = probe.projections[layer][index]
        count = len(projection.parts) * projection.heads[0]
        columns = slice(start, start + count)
        before = graph.sources_before(layer)

        def hook(module, inputs, output):
            weights = removed[:before, graph.attention_destinations(layer)][:, columns]
            if not weights.any():
                return None
            delta = torch.einsum("btsd,sn->btnd", difference(before), weights)
            x = stash["x"].reshape(*shape, -1)
            normed = probe.attention_norms[layer].forward(x[:, :, None] + delta.to(x.dtype))
            normed = normed.unflatten(2, (len(projection.parts), projection.heads[0]))
            heads = torch.einsum("btphd,phkd->btphk", normed, projection.weight())
            if projection.bias() is not None:
                heads = heads + projection.bias()
            return projection.merge_output(heads).reshape(output.shape)

        return hook

    hooks = [probe.embed.register_forward_hook(lambda m, i, o: record(o))]
    for layer in range(arch.layers):
        hooks.append(
            probe.attention_norms[layer].register_forward_pre_hook(
                lambda m, args: stash.__setitem__("x", args[0])
            )
        )
        start = 0
        for index, projection in enumerate(probe.projections[layer]):
            hooks.append(projection.module.register_forward_hook(per_head_projection(layer, index, start)))
            start += len(projection.parts) * projection.heads[0]
        hooks.append(
            probe.attention_outs[layer].register_forward_pre_hook(
                lambda m, args, layer=layer: record(probe.head_outputs(layer, args[0]))
            )
        )
        reads = graph.sources_before(layer) + (0 if arch.parallel_blocks else arch.heads)
        hooks.append(
            probe.mlp_norms[layer].register_forward_pre_hook(
                shifted_input(graph.mlp_destination(layer), reads)
            )
        )
        hooks.append(probe.mlp_outs[layer].register_forward_hook(lambda m, i, o: record(o)))
    hooks.append(
        probe.final_norm.register_forward_pre_hook(shifted_input(graph.logits_destination, graph.n_sources))
    )
    try:
        return probe.run(batch.clean)
    finally:
        for hook in hooks:
            hook.remove()


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per example, summed over the vocabulary."""
    log_p = F.log_softmax(p_logits.double(), dim=-1)
    return (log_p.exp() * (log_p - F.log_softmax(q_logits.double(), dim=-1))).sum(-1)


@torch.no_grad()
def circuit_evaluation(
    probe: ModelProbe, batches: Iterable[PairBatch], circuit: torch.Tensor, metric: str = "kl"
) -> dict[str, float]:
    """Return faithfulness (normalized and the paper's form), circuit accuracy and model accuracy.

    normalized: (L(C) - L(empty)) / (L(full) - L(empty)) with L the metric's
    loss, summed over examples. paper: 100 * (1 - |KL(full||corrupt) -
    KL(circuit||corrupt)| / KL(full||corrupt)), the authors' form.
    """
    totals = dict.fromkeys(
        ("full", "empty", "circuit", "kl_full", "kl_circuit", "hits", "model_hits", "n"), 0.0
    )
    for batch in batches:
        full = probe.run(batch.clean)
        empty = probe.run(batch.clean, batch.corrupted_ids)
        patched = patched_logits(probe, batch, circuit)
        args = (batch.answers, batch.corrupted_answers)
        totals["full"] += metric_loss(metric, full, full, *args).sum().item()
        totals["empty"] += metric_loss(metric, empty, full, *args).sum().item()
        totals["circuit"] += metric_loss(metric, patched, full, *args).sum().item()
        totals["kl_full"] += _kl(full, empty).sum().item()
        totals["kl_circuit"] += _kl(patched, empty).sum().item()
        totals["hits"] += (patched.argmax(-1) == batch.answers).sum().item()
        totals["model_hits"] += (full.argmax(-1) == batch.answers).sum().item()
        totals["n"] += len(batch.answers)
    span = totals["full"] - totals["empty"]
    return {
        "faithfulness": (totals["circuit"] - totals["empty"]) / span if span else float("nan"),
        "faithfulness_paper": 100 * (1 - abs(totals["kl_full"] - totals["kl_circuit"]) / totals["kl_full"])
        if totals["kl_full"]
        else float("nan"),
        "circuit_accuracy": totals["hits"] / totals["n"],
        "model_accuracy": totals["model_hits"] / totals["n"],
    }


DEFAULT_BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def faithfulness_curve(
    probe: ModelProbe,
    batches: Sequence[PairBatch],
    scores: torch.Tensor,
    metric: str = "kl",
    fractions: Sequence[float] = DEFAULT_BUDGETS,
    method: str = "topn",
) -> dict:
    """Return normalized faithfulness per edge fraction and the curve's areas (trapezoid over fractions):
    ``area`` (MIB's CPR) and ``area_abs_gap`` (CMD, the area of |1 - f|)."""
    points = []
    for fraction in fractions:
        circuit = select_circuit(scores, probe.graph, method, fraction=fraction)
        points.append(circuit_evaluation(probe, batches, circuit, metric)["faithfulness"])
    xs = torch.tensor(list(fractions), dtype=torch.float64)
    ys = torch.tensor(points, dtype=torch.float64)
    return {
        "fractions": list(fractions),
        "faithfulness": points,
        "area": torch.trapezoid(ys, xs).item(),
        "area_abs_gap": torch.trapezoid((1 - ys).abs(), xs).item(),
    }
