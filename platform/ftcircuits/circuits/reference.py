"""The slow reference scorers: a residual copy per destination and plain autograd, one pass per step,
and for ``exact`` one pass per edge.

They compute the same scores as ``attribution.attribute_batch`` the obvious way,
so the tests check the fast engine against them edge by edge and
``jobs.bench_eap`` measures what the fast engine saves. Too slow and memory-hungry
for real use.
"""

from __future__ import annotations

import torch

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.interventions import check_intervention
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.hooks import module_hooks
from ftcircuits.options import Metric


def reference_gradients(
    probe: ModelProbe,
    batch: PairBatch,
    embed: torch.Tensor,
    clean_logits: torch.Tensor,
    metric: Metric,
    replaced: list | None = None,
) -> torch.Tensor:
    """Give every destination its own copy of the residual; return d loss / d copy ``[B, T, n_dst, d]``.

    ``replaced``: extra forward hooks (that replace a module's output); a copy the loss does not reach
    through them gets a zero gradient.
    """
    copies: list[torch.Tensor] = []
    stash: dict = {}

    def own_copy(module, args):
        copy = args[0].clone()
        copies.append(copy)
        return (copy, *args[1:])

    def per_head_outputs(projection, norm):
        def hook(module, inputs, output):
            weight, bias = projection.weight(), projection.bias()
            parts = []
            for p in range(weight.shape[0]):
                heads = []
                for h in range(weight.shape[1]):
                    copy = stash["x"].clone()
                    copies.append(copy)
                    out = norm.forward(copy) @ weight[p, h].T  # .forward: no hooks fire
                    heads.append(out + bias[p, h] if bias is not None else out)
                parts.append(torch.stack(heads, dim=-2))
            return projection.merge_output(torch.stack(parts, dim=-3))

        return hook

    forward = [(probe.embed, lambda m, i, o: embed.clone().requires_grad_(True)), *(replaced or [])]
    pre = []
    for layer in range(probe.arch.layers):
        norm = probe.attention_norms[layer]
        pre.append((norm, lambda m, args: stash.__setitem__("x", args[0])))
        for projection in probe.projections[layer]:
            forward.append((projection.module, per_head_outputs(projection, norm)))
        pre.append((probe.mlp_norms[layer], own_copy))
    pre.append((probe.final_norm, own_copy))
    with module_hooks(forward, pre):
        logits = probe.run(batch.clean)
        loss = metric_loss(metric, logits, clean_logits, batch.answers, batch.corrupted_answers).sum()
        # in destination order; a copy the loss cannot reach (behind a replaced output) gets zeros
        grads = torch.autograd.grad(loss, copies, allow_unused=True, materialize_grads=True)
    return torch.stack([g.reshape(*batch.clean.input_ids.shape, -1) for g in grads], dim=2)


def replaced_outputs(
    probe: ModelProbe, batch: PairBatch, config: AttributionConfig, means: torch.Tensor | None
) -> torch.Tensor:
    """Return every source's replaced output ``[B, T, n_sources, d]`` (zero at padding), the obvious way."""
    check_intervention(config.intervention, means)
    if config.intervention == "patching":
        return probe.source_outputs(batch.clean, batch.corrupted_ids)[0]
    mask = batch.clean.attention_mask[:, :, None, None].to(probe.score_dtype)
    if config.intervention == "zero":
        return torch.zeros_like(mask).expand(-1, -1, probe.graph.n_sources, probe.arch.d_model).clone()
    return means.to(probe.score_dtype) * mask


def reference_scores(
    model: torch.nn.Module, batch: PairBatch, config: AttributionConfig, means: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the edge scores ``[n_sources, n_destinations]`` summed over the batch, the slow way."""
    probe = ModelProbe(model, describe_architecture(model.config))
    if config.method == "exact":
        return reference_exact_scores(probe, batch, config, means)
    if config.method == "eap-ig-activations":
        return reference_activation_scores(probe, batch, config, means)
    clean_z, clean_logits = probe.source_outputs(batch.clean, batch.clean.input_ids)
    corrupted_z = replaced_outputs(probe, batch, config, means)
    clean_embed, corrupted_embed = clean_z[:, :, 0], corrupted_z[:, :, 0]
    interpolated = [corrupted_embed + alpha * (clean_embed - corrupted_embed) for alpha in config.alphas()]
    grads = [reference_gradients(probe, batch, x, clean_logits, config.metric) for x in interpolated]
    mean = torch.stack(grads).mean(dim=0)
    return torch.einsum("btsd,btnd->sn", corrupted_z - clean_z, mean) * probe.graph.edge_mask_on(mean.device)


def reference_activation_scores(
    probe: ModelProbe, batch: PairBatch, config: AttributionConfig, means: torch.Tensor | None = None
) -> torch.Tensor:
    """EAP-IG-activations the slow way: for each source group (the input, a layer's heads, a layer's MLP)
    and each step, one pass with the group's output set to ``alpha z(clean) + (1 - alpha) z(replaced)``
    from stored outputs; the group's edges are scored with the mean destination gradient of its passes."""
    graph = probe.graph
    clean_z, clean_logits = probe.source_outputs(batch.clean, batch.clean.input_ids)
    replaced_z = replaced_outputs(probe, batch, config, means)
    scores = torch.zeros(graph.n_sources, graph.n_destinations, dtype=clean_z.dtype)
    groups = [(None, [0], None)]
    for layer in range(probe.arch.layers):
        heads = [graph.head_source(layer, h) for h in range(probe.arch.heads)]
        groups.append((probe.attention_outs[layer], heads, probe.attention_outs[layer].bias))
        groups.append((probe.mlp_outs[layer], [graph.mlp_source(layer)], None))
    for module, rows, bias in groups:
        grads = []
        for alpha in config.alphas():
            value = (alpha * clean_z[:, :, rows] + (1 - alpha) * replaced_z[:, :, rows]).sum(dim=2)
            if module is None:  # the input: the embedding itself
                grads.append(reference_gradients(probe, batch, value, clean_logits, config.metric))
                continue
            value = value if bias is None else value + bias

            def replace(m, i, output, value=value):
                return value.reshape(output.shape).to(output.dtype)

            grads.append(
                reference_gradients(
                    probe, batch, clean_z[:, :, 0], clean_logits, config.metric, [(module, replace)]
                )
            )
        mean = torch.stack(grads).mean(dim=0)
        delta = replaced_z[:, :, rows] - clean_z[:, :, rows]
        scores[rows] = torch.einsum("btsd,btnd->sn", delta, mean)
    return scores * graph.edge_mask_on(scores.device)


@torch.no_grad()
def reference_exact_scores(
    probe: ModelProbe, batch: PairBatch, config: AttributionConfig, means: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact scores the slow way: one pass per edge, adding ``z_u(replaced) - z_u(clean)`` to v's input
    (for a head's q, k or v: that head's projection of ``norm(x + delta)``); the loss change, summed."""
    graph = probe.graph
    clean_z, clean_logits = probe.source_outputs(batch.clean, batch.clean.input_ids)
    delta = replaced_outputs(probe, batch, config, means) - clean_z
    args = (clean_logits, batch.answers, batch.corrupted_answers)
    clean_loss = metric_loss(config.metric, clean_logits, *args).sum()
    scores = torch.zeros(graph.n_sources, graph.n_destinations, dtype=clean_z.dtype)
    for source, destination in graph.edge_mask.nonzero().tolist():
        add = delta[:, :, source]

        def plus(module, inputs, add=add):
            return (inputs[0] + add.reshape(inputs[0].shape).to(inputs[0].dtype), *inputs[1:])

        forward, pre = [], []
        layer, offset = divmod(destination, graph.destinations_per_layer)
        if destination == graph.logits_destination:
            pre.append((probe.final_norm, plus))
        elif offset == graph.destinations_per_layer - 1:
            pre.append((probe.mlp_norms[layer], plus))
        else:
            stash: dict = {}
            pre.append((probe.attention_norms[layer], lambda m, i, stash=stash: stash.__setitem__("x", i[0])))
            for projection in probe.projections[layer]:
                size = len(projection.parts) * projection.heads[0]
                if 0 <= offset < size:
                    part, head = divmod(offset, projection.heads[0])

                    norm = probe.attention_norms[layer]

                    def patch(
                        m,
                        i,
                        output,
                        projection=projection,
                        part=part,
                        head=head,
                        norm=norm,
                        add=add,
                        stash=stash,
                    ):
                        normed = norm.forward(stash["x"] + add.to(stash["x"].dtype))
                        value = normed @ projection.weight()[part, head].T
                        if projection.bias() is not None:
                            value = value + projection.bias()[part, head]
                        out = output.clone()
                        projection.split_output(out)[..., part, head, :] = value
                        return out

                    forward.append((projection.module, patch))
                offset -= size
        with module_hooks(forward, pre):
            logits = probe.run(batch.clean)
        scores[source, destination] = metric_loss(config.metric, logits, *args).sum() - clean_loss
    return scores


@torch.no_grad()
def reference_exact_node_scores(
    probe: ModelProbe, batch: PairBatch, config: AttributionConfig, means: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact node scores the slow way: one pass per source node with its output *set* to its replaced
    value (a head: the attention output less the head's write in this pass, plus its replaced write);
    the loss change, summed ``[n_sources]``."""
    graph = probe.graph
    clean_z, clean_logits = probe.source_outputs(batch.clean, batch.clean.input_ids)
    replaced = replaced_outputs(probe, batch, config, means)
    args = (clean_logits, batch.answers, batch.corrupted_answers)
    clean_loss = metric_loss(config.metric, clean_logits, *args).sum()
    scores = torch.zeros(graph.n_sources, dtype=clean_z.dtype)
    for source in range(graph.n_sources):
        value = replaced[:, :, source]
        if source == 0:
            hook = (probe.embed, lambda m, i, out, value=value: value.reshape(out.shape).to(out.dtype))
        else:
            layer, head = divmod(source - 1, graph.heads + 1)
            if head == graph.heads:
                hook = (probe.mlp_outs[layer], lambda m, i, out, value=value: value.reshape(out.shape))
            else:

                def swap_head(m, inputs, out, layer=layer, head=head, value=value):
                    own = probe.head_outputs(layer, inputs[0])[head]
                    return out - own.reshape(out.shape) + value.reshape(out.shape).to(out.dtype)

                hook = (probe.attention_outs[layer], swap_head)
        with module_hooks([hook], []):
            logits = probe.run(batch.clean)
        scores[source] = metric_loss(config.metric, logits, *args).sum() - clean_loss
    return scores
