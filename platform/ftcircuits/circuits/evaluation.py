"""Evaluating a circuit: every non-circuit edge patched with replaced activations, in one pass.

In a clean forward pass each destination v reads its input plus
``sum over removed edges (u, v) of z_u(replaced) - z_u(current)``, where
z_u(current) is u's output in this very (patched) pass. So the full circuit
reproduces the clean model exactly and, with ``patching`` (replaced = corrupted), the empty circuit the
corrupted one. The intervention (``interventions``) may also replace with zeros or the sources' means.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ftcircuits.circuits.interventions import check_intervention, write_replacements
from ftcircuits.circuits.metrics import kl_divergence, metric_loss
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.selection import select_circuit
from ftcircuits.models.hooks import module_hooks
from ftcircuits.options import Intervention, Metric, SelectionMethod


@torch.no_grad()
def patched_logits(
    probe: ModelProbe, batch: PairBatch, circuit: torch.Tensor, intervention: Intervention = "patching",
    means: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Return last-position logits of the clean input with every non-circuit edge intervened on.

    One source-major buffer holds the replaced outputs (``write_replacements``); as the patched pass
    produces each source's output, it is subtracted in place, so when a destination reads, the buffer's
    prefix holds ``z(replaced) - z(current)`` of every source before it. The buffer is in the score dtype.
    """
    graph, arch = probe.graph, probe.arch
    buffer = probe.source_buffer(batch.clean, probe.score_dtype)
    write_replacements(probe, batch, buffer, intervention, means)
    removed = (graph.edge_mask_on(buffer.device) & ~circuit.to(buffer.device)).to(buffer)
    if not removed.any():
        return probe.run(batch.clean)
    shape = batch.clean.input_ids.shape
    stash: dict = {}

    def shift(weights: torch.Tensor) -> torch.Tensor:
        """Return sum over sources of weight * (corrupted - current): ``[columns, B, T, d]``."""
        rows = weights.shape[0]
        return (weights.T @ buffer[:rows].view(rows, -1)).view(weights.shape[1], *shape, -1)

    def shifted_input(destination: int, reads: int):
        def hook(module, args):
            weights = removed[:reads, destination, None]
            if not weights.any():
                return None
            return (args[0] + shift(weights)[0].reshape(args[0].shape).to(args[0].dtype), *args[1:])

        return hook

    def per_head_projection(layer: int, index: int, start: int):
        projection = probe.projections[layer][index]
        count = len(projection.parts) * projection.heads[0]
        columns = graph.attention_destinations(layer).start + start
        before = graph.sources_before(layer)

        def hook(module, inputs, output):
            weights = removed[:before, columns : columns + count]
            if not weights.any():
                return None
            x = stash["x"].reshape(*shape, -1)
            delta = shift(weights).permute(1, 2, 0, 3)  # [B, T, heads, d]
            normed = probe.attention_norms[layer].forward(x[:, :, None] + delta.to(x.dtype))
            normed = normed.unflatten(2, (len(projection.parts), projection.heads[0]))
            heads = torch.einsum("btphd,phkd->btphk", normed, projection.weight())
            if projection.bias() is not None:
                heads = heads + projection.bias()
            return projection.merge_output(heads).reshape(output.shape)

        return hook

    forward, pre = probe.source_hooks(shape, lambda s, out: buffer[s : s + len(out)].sub_(out))
    for layer in range(arch.layers):
        pre.append((probe.attention_norms[layer], lambda m, args: stash.__setitem__("x", args[0])))
        start = 0
        for index, projection in enumerate(probe.projections[layer]):
            forward.append((projection.module, per_head_projection(layer, index, start)))
            start += len(projection.parts) * projection.heads[0]
        reads = graph.sources_before(layer) + (0 if arch.parallel_blocks else arch.heads)
        pre.append((probe.mlp_norms[layer], shifted_input(graph.mlp_destination(layer), reads)))
    pre.append((probe.final_norm, shifted_input(graph.logits_destination, graph.n_sources)))
    with module_hooks(forward, pre):
        return probe.run(batch.clean)


@torch.no_grad()
def circuit_evaluation(
    probe: ModelProbe, batches: Iterable[PairBatch], circuit: torch.Tensor, metric: Metric = "kl",
    intervention: Intervention = "patching", means: torch.Tensor | None = None,
) -> dict[str, float]:  # fmt: skip
    """Return faithfulness (normalized and the paper's form), circuit accuracy, model accuracy, and
    ``input_kl``: the mean KL between the model's clean and corrupted next-token distributions (near 0:
    the model's output barely depends on the input, and its circuit means little).

    normalized: (L(C) - L(empty)) / (L(full) - L(empty)) with L the metric's
    loss, summed over examples. paper: 100 * (1 - |KL(full||corrupt) -
    KL(circuit||corrupt)| / KL(full||corrupt)), the authors' form. The circuit may be on any device.
    "empty" and "corrupt" are the model with every edge intervened on (``patching``: the corrupted run).
    """
    check_intervention(intervention, means)
    totals = dict.fromkeys(
        ("full", "empty", "circuit", "kl_full", "kl_circuit", "hits", "model_hits", "n"), 0.0
    )
    for batch in batches:
        full = probe.run(batch.clean)
        if intervention == "patching":
            empty = probe.run(batch.clean, batch.corrupted_ids)
        else:
            empty = patched_logits(
                probe, batch, torch.zeros_like(circuit, dtype=torch.bool), intervention, means
            )
        patched = patched_logits(probe, batch, circuit, intervention, means)
        args = (batch.answers, batch.corrupted_answers)
        totals["full"] += metric_loss(metric, full, full, *args).sum().item()
        totals["empty"] += metric_loss(metric, empty, full, *args).sum().item()
        totals["circuit"] += metric_loss(metric, patched, full, *args).sum().item()
        totals["kl_full"] += kl_divergence(full, empty, torch.float64).sum().item()
        totals["kl_circuit"] += kl_divergence(patched, empty, torch.float64).sum().item()
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
        "input_kl": totals["kl_full"] / totals["n"],
    }


DEFAULT_BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def faithfulness_curve(
    probe: ModelProbe,
    batches: Sequence[PairBatch],
    scores: torch.Tensor,
    metric: Metric = "kl",
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    method: SelectionMethod = "top",
    intervention: Intervention = "patching",
    means: torch.Tensor | None = None,
) -> dict:
    """Return normalized faithfulness per edge budget and the curve's areas (trapezoid over budgets):
    ``area`` (MIB's CPR) and ``area_abs_gap`` (CMD, the area of |1 - f|), all Python floats.

    The scores may be on any device; each budget's circuit is selected there and evaluated on the model's.
    """
    circuits = [select_circuit(scores, probe.graph, method, budget=budget) for budget in budgets]
    return curve_of_circuits(probe, batches, budgets, circuits, metric, intervention, means)


def curve_of_circuits(
    probe: ModelProbe, batches: Sequence[PairBatch], budgets: Sequence[float],
    circuits: Sequence[torch.Tensor], metric: Metric = "kl", intervention: Intervention = "patching",
    means: torch.Tensor | None = None,
) -> dict:  # fmt: skip
    """Return the normalized faithfulness of each circuit (one per budget, of edges or of nodes) and the
    curve's areas over ``budgets`` (``faithfulness_curve`` says which)."""
    points = [
        circuit_evaluation(probe, batches, circuit, metric, intervention, means)["faithfulness"]
        for circuit in circuits
    ]
    xs = torch.tensor(list(budgets), dtype=torch.float64, device="cpu")  # Python numbers: host arithmetic
    ys = torch.tensor(points, dtype=torch.float64, device="cpu")
    return {
        "budgets": list(budgets),
        "faithfulness": points,
        "area": torch.trapezoid(ys, xs).item(),
        "area_abs_gap": torch.trapezoid((1 - ys).abs(), xs).item(),
    }
