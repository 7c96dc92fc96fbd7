"""Exact edge scores: each edge patched on its own, many edges per forward pass.

An edge's exact score is the metric's change when that edge alone carries the replaced value (the
corrupted prompt's output, zero or the mean) and every other edge the clean one, summed over the
batch: ``L(edge patched) - L(clean)``, the quantity EAP and EAP-IG approximate (same sign convention).

With only edge (u, v) patched, everything before v is clean, so patching it means adding
``delta_u = z_u(replaced) - z_u(clean)`` to v's input and nothing else. Two edges in one pass would
not be exact (the first changes what flows into the second), so the batch is stacked into copies
along the batch dimension, copy e patching edge e alone, and one forward pass scores many edges.

Copies of edges into one layer run together, and the pass stacks them only from that layer on: the
layers before it run once on the plain batch (every copy is clean there), and a pre-hook on the
layer expands the residual and every batch-sized argument (attention mask, positions, rotary
tables) to the copies. With patching, every position before the first one where a clean and a
corrupted prompt differ is clean in every copy (causal attention): the copies run only the positions
after it, on the clean run's keys and values there (a key/value cache). Only each prompt's last
position reaches the logits, so the last layer's MLP and the unembedding see only that position
(the MLP's output broadcasts over the positions in the residual sum, wrongly but harmlessly at the
others; OPT's flattened MLP input keeps every position), and its attention runs one query per copy
(``exact_attention.last_query_only``). A chunk patches heads' inputs only or MLP inputs only; at the
destination layer the input is clean in every copy, so the attention norm and the q/k/v projections run
once and their outputs repeat to the copies, each copy's one patched head input recomputed there; in a
parallel block (GPT-NeoX) the MLP of a heads' chunk runs once too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from transformers import DynamicCache

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.exact_attention import Prefix, last_query_only
from ftcircuits.circuits.interventions import write_replacements
from ftcircuits.circuits.memory import exact_copies
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.encoding import model_logits
from ftcircuits.models.hooks import module_hooks


def clean_deltas(
    probe: ModelProbe, batch: PairBatch, config: AttributionConfig, means: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return every source's ``z(replaced) - z(clean)`` ``[n_sources, B, T, d]`` (zero at padding) and the
    clean run's last-position logits: what a copy patching one edge or one node adds, and its reference."""
    delta = probe.source_buffer(batch.clean, probe.score_dtype)
    write_replacements(probe, batch, delta, config.intervention, means)
    clean_logits = probe.write_sources(
        batch.clean, batch.clean.input_ids, lambda s, out: delta[s : s + len(out)].sub_(out)
    )
    delta.mul_(batch.clean.attention_mask[:, :, None].to(delta.dtype))
    return delta, clean_logits


def planned_copies(probe: ModelProbe, batch: PairBatch, config: AttributionConfig) -> int:
    """Return how many copies of ``batch`` one stacked pass holds (``memory.exact_copies``)."""
    size, length = batch.clean.input_ids.shape
    dtype = next(probe.model.parameters()).dtype
    return exact_copies(probe.arch, size, length, config.stacked, dtype)


@torch.no_grad()
def exact_scores(
    probe: ModelProbe, batch: PairBatch, config: AttributionConfig, means: torch.Tensor | None = None,
    copies: int | None = None, edges: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Return exact edge scores ``[n_sources, n_destinations]`` summed over the batch's examples.

    ``copies``: edges per forward pass (default: as many as the batch's planned memory holds,
    ``memory.exact_copies``; 1 is one pass per edge). ``edges``: a boolean mask of the edges to score
    (default: all; the others score 0).
    """
    graph = probe.graph
    delta, clean_logits = clean_deltas(probe, batch, config, means)
    copies = planned_copies(probe, batch, config) if copies is None else copies
    scores = torch.zeros(graph.n_sources, graph.n_destinations, dtype=probe.score_dtype, device=delta.device)
    scored = graph.edge_mask_on(delta.device)
    if edges is not None:
        scored = scored & edges.to(scored.device)
    sources, destinations = scored.nonzero(as_tuple=True)
    layer_of = destinations // graph.destinations_per_layer  # logits: layer L
    prefix = _clean_prefix(probe, batch) if config.intervention == "patching" else None
    # the unpatched loss along the same path as the copies' (float32 rounds a cached run differently)
    unpatched = clean_logits if prefix is None else _suffix_logits(probe, batch, prefix, probe.arch.layers, 1)
    clean_loss = copy_losses(config, batch, unpatched, clean_logits, 1)[0]
    into_mlp = destinations % graph.destinations_per_layer == graph.destinations_per_layer - 1
    for layer in range(probe.arch.layers + 1):
        for kind in (False, True):  # a chunk patches heads' inputs only or MLP inputs only
            into_layer = ((layer_of == layer) & (into_mlp == kind)).nonzero()[:, 0]
            for chunk in into_layer.split(copies) if len(into_layer) else ():
                chunk_sources, chunk_destinations = sources[chunk], destinations[chunk]
                logits = _patched_logits(
                    probe, batch, delta, layer, chunk_sources, chunk_destinations, prefix
                )
                losses = copy_losses(config, batch, logits, clean_logits, len(chunk))
                scores[chunk_sources, chunk_destinations] = (losses - clean_loss).sum(dim=1).to(scores.dtype)
    return scores


def _clean_prefix(probe: ModelProbe, batch: PairBatch) -> Prefix | None:
    """Return the clean run's keys and values before the first position where a clean and a corrupted
    prompt differ (and before every prompt's last token), or None when that is position 0."""
    differs = (batch.clean.input_ids != batch.corrupted_ids).any(dim=0).nonzero()
    first = int(differs[0, 0]) if len(differs) else batch.clean.input_ids.shape[1]
    length = min(first, int(batch.clean.last_index.min()))
    if length == 0:
        return None
    cache = DynamicCache()
    clean = batch.clean
    probe.model(
        input_ids=clean.input_ids, attention_mask=clean.attention_mask, position_ids=clean.position_ids,
        cache=cache, use_cache=True,
    )  # fmt: skip
    keys_values = [
        (layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone()) for layer in cache.layers
    ]
    return Prefix(length, keys_values, batch.clean.input_ids.shape[1])


def copy_losses(
    config: AttributionConfig, batch: PairBatch, logits: torch.Tensor, clean_logits: torch.Tensor, copies: int
) -> torch.Tensor:
    """Return the metric's loss per copy and example ``[copies, B]``."""
    if config.metric in ("kl", "kl_vocab_mean"):  # per row over the vocabulary: the clean logits broadcast
        return metric_loss(
            config.metric, logits.view(copies, len(clean_logits), -1), clean_logits, batch.answers
        )
    corrupted = None if batch.corrupted_answers is None else batch.corrupted_answers.repeat(copies)
    loss = metric_loss(
        config.metric, logits, clean_logits.repeat(copies, 1), batch.answers.repeat(copies), corrupted
    )
    return loss.view(copies, -1)


def _repeat_batch(value, batch: int, copies: int, memo: dict):
    """Return ``value`` with every tensor of two or more dimensions and leading size ``batch`` repeated
    ``copies`` times along it (copy-major), looking into tuples, lists and dicts; ``memo`` keeps each
    tensor's repetition for the pass (the layers share their mask and rotary tables)."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == batch:
            if id(value) not in memo:
                memo[id(value)] = value, value.repeat(copies, *[1] * (value.dim() - 1))
            return memo[id(value)][1]
        return value
    if isinstance(value, tuple | list):
        return type(value)(_repeat_batch(v, batch, copies, memo) for v in value)
    if isinstance(value, dict):
        return {k: _repeat_batch(v, batch, copies, memo) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class _Copies:
    """One pass's stacked copies of the batch (copy-major), copy e patching edge ``(sources[e], ...)``."""

    count: int
    size: int  # examples per copy
    length: int  # positions that run
    delta: torch.Tensor  # [n_sources, B, length, d]: each source's replaced minus clean output
    sources: torch.Tensor  # [count]
    last: torch.Tensor  # [count * B]: each row's last real position among those that run

    def last_positions(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return each row's last real position ``[E*B, 1, d]`` of ``[E*B, T, d]`` (as it is if already
        gathered, or flattened to ``[E*B*T, d]`` as OPT's MLP input is)."""
        if hidden.dim() != 3 or hidden.shape[1] == 1:
            return hidden
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), self.last][:, None]

    def patched(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` (the copies' stacked destination input) with ``delta[source]`` added to each."""
        x = x.clone()
        x.view(self.count, self.size, self.length, -1).add_(self.delta[self.sources].to(x.dtype))
        return x

    def repeated(self, module, args, output: torch.Tensor) -> torch.Tensor:
        """A forward hook: ``output`` of one copy repeated to every copy."""
        return output.repeat(self.count, *[1] * (output.dim() - 1))


def _patched_logits(
    probe: ModelProbe, batch: PairBatch, delta: torch.Tensor, layer: int, sources: torch.Tensor,
    destinations: torch.Tensor, prefix: Prefix | None,
) -> torch.Tensor:  # fmt: skip
    """Return last-position logits ``[E*B, vocab]`` of E copies of the clean batch, copy e with edge
    ``(sources[e], destinations[e])`` patched; every destination is in ``layer`` (``layers``: logits).

    With a ``prefix``, only the positions after it run, on the prefix's clean keys and values.
    """
    start = 0 if prefix is None else prefix.length
    size, length = batch.clean.input_ids.shape
    last = (batch.clean.last_index - start).repeat(len(sources))
    copies = _Copies(len(sources), size, length - start, delta[:, :, start:], sources, last)
    if layer == probe.arch.layers:  # logits: the final norm's input, expanded here

        def logits_input(module, args):
            return (copies.patched(copies.repeated(module, args, args[0])), *args[1:])

        forward, pre, pre_kwargs = [], [(probe.final_norm, logits_input)], []
    else:
        forward, pre, pre_kwargs = _layer_hooks(probe, layer, destinations, copies)
    pre.append((probe.unembed, lambda m, args: (copies.last_positions(args[0]), *args[1:])))
    with module_hooks(forward, pre, pre_kwargs):
        if prefix is None:
            return model_logits(probe.model, batch.clean)[:, 0]
        return _suffix_logits(probe, batch, prefix, layer, copies.count)


def _layer_hooks(
    probe: ModelProbe, layer: int, destinations: torch.Tensor, copies: _Copies
) -> tuple[list, list, list]:
    """Return the (forward, pre, pre-with-kwargs) hooks of copies patching edges into ``layer``: the copies
    stack from ``layer`` on; there the attention's input runs once, and the MLP too in a parallel block
    unless the copies patch it; the last layer runs at the last positions (its attention's one query)."""
    graph, arch, count, size = probe.graph, probe.arch, copies.count, copies.size
    memo: dict = {}

    def expand(module, args, kwargs):
        if count > 1:
            return _repeat_batch(args, size, count, memo), _repeat_batch(kwargs, size, count, memo)
        return None

    forward, pre, pre_kwargs = [], [], [(probe.blocks[later], expand) for later in range(layer, arch.layers)]
    offset = destinations - layer * graph.destinations_per_layer
    into_mlp = bool(offset[0] == graph.destinations_per_layer - 1)  # a chunk is of one kind
    at_last = layer == arch.layers - 1
    if into_mlp:

        def mlp_input(module, args):
            x = copies.patched(args[0])
            return (copies.last_positions(x) if at_last else x, *args[1:])

        pre.append((probe.mlp_norms[layer], mlp_input))
    elif arch.parallel_blocks:  # the MLP reads the layer's input, clean in every copy: run it once

        def clean_mlp_input(module, args):
            x = args[0][:size]
            if at_last:
                x = x[torch.arange(size, device=x.device), copies.last[:size]][:, None]
            return (x, *args[1:])

        pre.append((probe.mlp_norms[layer], clean_mlp_input))
        forward.append((probe.mlp_outs[layer], copies.repeated))
    if not at_last or not (into_mlp or arch.parallel_blocks):
        pre.append((probe.mlp_norms[-1], lambda m, args: (copies.last_positions(args[0]), *args[1:])))
    more_forward, more_pre = _attention_input_hooks(
        probe, layer, copies.sources, offset if not into_mlp else None, copies.delta, count, copies.last
    )
    if not arch.names.masks_by_query_count:
        attention = probe.model.get_submodule(arch.names.attention.format(i=arch.layers - 1))
        pre_kwargs.append((attention, partial(last_query_only, last=copies.last)))
    return forward + more_forward, pre + more_pre, pre_kwargs


def _suffix_logits(
    probe: ModelProbe, batch: PairBatch, prefix: Prefix, layer: int, count: int
) -> torch.Tensor:
    """Run the positions after ``prefix`` on its cache (repeated ``count`` times from ``layer`` on); return
    the logits at each prompt's last position."""
    clean, start = batch.clean, prefix.length
    logits = probe.model(
        input_ids=clean.input_ids[:, start:], attention_mask=clean.attention_mask,
        position_ids=clean.position_ids[:, start:], cache=prefix.cache(layer, count), use_cache=True,
    ).logits  # fmt: skip
    if logits.shape[1] == 1:  # the unembedding saw the last positions only
        return logits[:, 0]
    return logits[torch.arange(len(logits), device=logits.device), clean.last_index - start]


def _attention_input_hooks(
    probe: ModelProbe, layer: int, sources: torch.Tensor, offset: torch.Tensor | None, delta: torch.Tensor,
    count: int, last: torch.Tensor,
) -> tuple[list, list]:  # fmt: skip
    """Return (forward, pre) hooks that run ``layer``'s attention norm and q/k/v projections once, on the
    layer's input (clean in every copy), and repeat the projections' outputs to the ``count`` copies,
    each copy's one patched head input recomputed there (``offset``: each copy's destination within the
    layer; None: no head input is patched).

    A second call on one position (``last_query_only``'s) gets the first call's outputs at each copy's
    ``last`` position."""
    stash: dict = {}

    def projection_input(module, args):
        stash["second"] = args[0].shape[1] == 1 < stash["normed"].shape[1]
        return (stash["normed"][:, :1] if stash["second"] else stash["normed"], *args[1:])

    def norm_input(module, args):
        stash["x"] = args[0][: len(args[0]) // count]
        return (stash["x"], *args[1:])

    def norm_output(module, args, output):
        stash["normed"] = output  # the attention reads only the shape of its input: no copies of it
        return output.new_empty(()).expand(count * len(output), *output.shape[1:])

    forward, pre = [(probe.attention_norms[layer], norm_output)], [(probe.attention_norms[layer], norm_input)]
    first = 0
    for projection in probe.projections[layer]:
        heads = projection.heads[0]
        patch = None
        if offset is not None:
            mine = (offset >= first) & (offset < first + len(projection.parts) * heads)
            if mine.any():
                local = offset[mine] - first
                patch = _projection_patch(
                    probe,
                    layer,
                    projection,
                    mine.nonzero()[:, 0],
                    local // heads,
                    local % heads,
                    sources[mine],
                )
        pre.append((projection.module, projection_input))
        forward.append((projection.module, partial(_repeated_output, patch=patch, delta=delta, stash=stash,
                                                   count=count, last=last)))  # fmt: skip
        first += len(projection.parts) * heads
    return forward, pre


def _repeated_output(module, inputs, output, *, patch, delta, stash, count, last):
    """Return a projection's output repeated to the copies, patched by ``patch`` if any (in a second call,
    the first call's at each copy's ``last`` position)."""
    if stash["second"]:
        return stash[module][torch.arange(len(last), device=last.device), last][:, None]
    output = output.repeat(count, *[1] * (output.dim() - 1))
    if patch is not None:
        patch(output, delta, stash["x"], count)
    stash[module] = output
    return output


def _projection_patch(
    probe: ModelProbe, layer: int, projection, rows: torch.Tensor, parts: torch.Tensor, heads: torch.Tensor,
    sources: torch.Tensor,
):  # fmt: skip
    """Return a function ``(output, delta, x, count)`` that writes into the repeated projection
    ``output``, for each copy in ``rows``, its one patched head input: the head's q, k or v from
    ``norm(x + delta[source])`` (``x``: the layer's input ``[B, T, d]``)."""
    norm = probe.attention_norms[layer]

    def patch(out, delta, x, count):
        size, length = x.shape[0], x.shape[1]
        patched = x + delta[sources].to(x.dtype)  # [n, B, T, d]
        weight = projection.weight()[parts, heads]  # [n, dh, d]
        values = torch.einsum("nbtd,nkd->nbtk", norm.forward(patched), weight)
        bias = projection.bias()
        if bias is not None:
            values = values + bias[parts, heads][:, None, None, :]
        split = projection.split_output(out.view(count, size, length, -1))  # [E, B, T, parts, heads, dh]
        split[rows, :, :, parts, heads] = values.to(out.dtype)

    return patch
