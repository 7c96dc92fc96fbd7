"""Node circuits: a source node's total effect, circuits chosen by node, node-level faithfulness curves.

A node's score is its total effect on the metric when its whole output is replaced (by the
intervention's value) and everything else is left to respond: ``L(u replaced) - L(clean)``, summed
over examples, with the sign convention of the edge scores (``metrics``).

- Gradient methods: an edge score is ``delta_u . dL/dx_v`` and every destination after ``u`` reads
  ``z_u``, so ``dL/dz_u = sum_v dL/dx_v`` and the node's first-order total effect ``delta_u . dL/dz_u``
  is exactly the sum of its outgoing edge scores (``outgoing_sums``): free, from the score matrix.
  With ``eap-ig-activations`` the gradients are those of the node's own group's interpolation (the
  input, a layer's heads, an MLP), so the sum is integrated gradients along that group's output.
- ``exact``: the node's output is patched on its own (all its outgoing edges at once) and the loss
  change measured (``exact_node_scores``), not the sum of its exact edge scores (the metric is not
  additive over edges).

A node circuit is a union of edges: for chosen nodes N, every edge whose source is in N or is
``input`` and whose destination belongs to a node in N or is ``logits``. ``input`` and ``logits`` are
the graph's ends and always kept (under patching a circuit without the input carries nothing clean and
evaluates as the empty one); so no nodes is the direct path ``input -> logits``, not the empty circuit,
and every chosen node has an edge from ``input`` and one to ``logits``: dead-node pruning removes
nothing, and ``nodes_in_circuit`` gives back N with ``input`` and ``logits``. The circuit is an edge
mask like any other, evaluated by ``circuit_evaluation`` and compared with edge circuits alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.evaluation import curve_of_circuits
from ftcircuits.circuits.exact import clean_deltas, copy_losses, planned_copies
from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.selection import NodeIndex
from ftcircuits.models.hooks import module_hooks
from ftcircuits.options import Intervention, Metric

# shares of the graph's non-input nodes: the tiny model's 54 give 1, 3, 5, 11, 16, 27, 40, 54 nodes,
# pythia-1.4b's 408 give 8, 20, 41, 82, 122, 204, 306, 408
DEFAULT_NODE_BUDGETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def outgoing_sums(scores: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Return every source's sum of its edge scores ``[n_sources]`` (non-edges ignored), on the scores'
    device: the node scores of the gradient methods."""
    return torch.where(graph.edge_mask_on(scores.device), scores, 0).sum(dim=1)


def node_score_names(node_scores: torch.Tensor, graph: Graph) -> dict[str, float]:
    """Return ``{source node name: score}`` in graph order, as the circuit's JSON holds them."""
    return dict(zip(graph.source_names, node_scores.double().cpu().tolist(), strict=True))


@torch.no_grad()
def exact_node_scores(
    probe: ModelProbe, batch: PairBatch, config: AttributionConfig, means: torch.Tensor | None = None,
    copies: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """Return every source node's exact total effect ``[n_sources]`` summed over the batch's examples:
    ``L(node's output replaced) - L(clean)``.

    Copies of the batch are stacked along the batch axis, copy e replacing node e's output alone (the
    clean output plus ``z(replaced) - z(clean)``, exact because everything before it is clean);
    ``copies`` nodes per forward pass (default: what the batch's planned memory holds,
    ``memory.exact_copies``; 1 is one pass per node).
    """
    graph = probe.graph
    delta, clean_logits = clean_deltas(probe, batch, config, means)
    copies = planned_copies(probe, batch, config) if copies is None else copies
    clean_loss = copy_losses(config, batch, clean_logits, clean_logits, 1)[0]
    scores = torch.zeros(graph.n_sources, dtype=probe.score_dtype, device=delta.device)
    for start in range(0, graph.n_sources, copies):
        chunk = range(start, min(start + copies, graph.n_sources))
        logits = _node_patched_logits(probe, batch, delta, chunk)
        losses = copy_losses(config, batch, logits, clean_logits, len(chunk))
        scores[chunk.start : chunk.stop] = (losses - clean_loss).sum(dim=1).to(scores.dtype)
    return scores


def _node_patched_logits(
    probe: ModelProbe, batch: PairBatch, delta: torch.Tensor, sources: range
) -> torch.Tensor:
    """Return last-position logits ``[E*B, vocab]`` of E copies of the clean batch, copy e with source
    ``sources[e]``'s output shifted by ``delta[sources[e]]``."""
    graph, count = probe.graph, len(sources)
    size, length = batch.clean.input_ids.shape

    def shifted(rows: list[int], copy_of: list[int]):
        def hook(module, inputs, output):  # OPT's MLP output is flattened: [E*B*T, d] views alike
            out = output.clone()
            view = out.view(count, size, length, -1)
            view[copy_of] += delta[rows].to(out.dtype)
            return out

        return hook

    by_module: dict[torch.nn.Module, tuple[list[int], list[int]]] = {}
    for copy, source in enumerate(sources):
        module = _output_module(probe, graph, source)
        rows, copy_of = by_module.setdefault(module, ([], []))
        rows.append(source)
        copy_of.append(copy)
    forward = [(module, shifted(rows, copy_of)) for module, (rows, copy_of) in by_module.items()]
    with module_hooks(forward, []):
        return probe.run(batch.clean.repeat(count))


def _output_module(probe: ModelProbe, graph: Graph, source: int) -> torch.nn.Module:
    """Return the module whose output holds ``source``'s write into the residual: the embedding, a
    layer's attention output projection (the sum of its heads' writes and its bias), or an MLP's output."""
    if source == 0:
        return probe.embed
    layer, offset = divmod(source - 1, graph.heads + 1)
    return probe.mlp_outs[layer] if offset == graph.heads else probe.attention_outs[layer]


# --- selection -------------------------------------------------------------------------------------
def node_count(graph: Graph, budget: float | None = None, nodes: int | None = None) -> int:
    """Return a node circuit's count of chosen nodes from a budget (share of the graph's non-input source
    nodes, at least one) or a count (0 to all; exactly one of the two)."""
    available = graph.n_sources - 1
    if (budget is None) == (nodes is None):
        raise ValueError("give exactly one of a node budget (share of nodes) or a node count")
    if budget is not None:
        if not 0 < budget <= 1:
            raise ValueError(f"node budget (share of non-input nodes) must be in (0, 1], got {budget}")
        return max(1, round(budget * available))
    if not 0 <= nodes <= available:
        raise ValueError(f"node count must be in [0, {available}] (the non-input nodes), got {nodes}")
    return nodes


def top_nodes(node_scores: torch.Tensor, graph: Graph, count: int) -> torch.Tensor:
    """Return the boolean ``[n_sources]`` mask of the ``count`` non-input nodes with the largest |score|,
    and ``input``, on the scores' device."""
    if node_scores.shape != (graph.n_sources,):
        raise ValueError(f"node scores must have shape ({graph.n_sources},), got {tuple(node_scores.shape)}")
    chosen = torch.zeros(graph.n_sources, dtype=torch.bool, device=node_scores.device)
    chosen[0] = True
    chosen[1 + node_scores[1:].abs().float().topk(count).indices] = True
    return chosen


def node_circuit(chosen: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Return the edge mask of the node circuit of ``chosen`` (boolean ``[n_sources]``), on its device:
    every edge from a chosen node or ``input`` into a chosen node or ``logits``."""
    owner = NodeIndex(graph).owner_sources(chosen.device)  # per destination; -1: logits
    sources = chosen.clone()
    sources[0] = True
    destinations = (owner < 0) | sources[owner.clamp(min=0)]
    return graph.edge_mask_on(chosen.device) & sources[:, None] & destinations[None, :]


def select_node_circuit(
    node_scores: torch.Tensor, graph: Graph, budget: float | None = None, nodes: int | None = None
) -> torch.Tensor:
    """Return the node circuit of the top nodes by |score| at a budget (share of non-input nodes) or a
    count, as an edge mask on the scores' device."""
    return node_circuit(top_nodes(node_scores, graph, node_count(graph, budget, nodes)), graph)


def node_faithfulness_curve(
    probe: ModelProbe, batches: Sequence[PairBatch], node_scores: torch.Tensor, metric: Metric = "kl",
    budgets: Sequence[float] = DEFAULT_NODE_BUDGETS, intervention: Intervention = "patching",
    means: torch.Tensor | None = None,
) -> dict:  # fmt: skip
    """Return normalized faithfulness per node budget and the curve's areas, as ``faithfulness_curve``
    does for edges, and per budget the node circuit's ``nodes`` (chosen, non-input) and ``edges``."""
    circuits = [select_node_circuit(node_scores, probe.graph, budget=budget) for budget in budgets]
    curve = curve_of_circuits(probe, batches, budgets, circuits, metric, intervention, means)
    return curve | {
        "nodes": [node_count(probe.graph, budget=budget) for budget in budgets],
        "edges": [int(circuit.sum()) for circuit in circuits],
    }
