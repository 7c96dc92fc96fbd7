"""The slow reference EAP-IG scorer: a residual copy per destination and plain autograd, one pass per step.

It computes the same scores as ``attribution.attribute_batch`` the obvious way,
so the tests check the fast engine against it edge by edge and
``jobs.bench_eap`` measures what the fast engine saves. Too slow and memory-hungry
for real use.
"""

from __future__ import annotations

import torch

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.hooks import module_hooks
from ftcircuits.options import Metric


def reference_gradients(
    probe: ModelProbe, batch: PairBatch, embed: torch.Tensor, clean_logits: torch.Tensor, metric: Metric
) -> torch.Tensor:
    """Give every destination its own copy of the residual; return d loss / d copy ``[B, T, n_dst, d]``."""
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

    forward = [(probe.embed, lambda m, i, o: embed.clone().requires_grad_(True))]
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
        grads = torch.autograd.grad(loss, copies)  # forward order = destination order
    return torch.stack([g.reshape(*batch.clean.input_ids.shape, -1) for g in grads], dim=2)


def reference_scores(model: torch.nn.Module, batch: PairBatch, config: AttributionConfig) -> torch.Tensor:
    """Return the edge scores ``[n_sources, n_destinations]`` summed over the batch, the slow way."""
    probe = ModelProbe(model, describe_architecture(model.config))
    clean_z, clean_logits = probe.source_outputs(batch.clean, batch.clean.input_ids)
    corrupted_z, _ = probe.source_outputs(batch.clean, batch.corrupted_ids)
    clean_embed, corrupted_embed = clean_z[:, :, 0], corrupted_z[:, :, 0]
    interpolated = [corrupted_embed + alpha * (clean_embed - corrupted_embed) for alpha in config.alphas()]
    grads = [reference_gradients(probe, batch, x, clean_logits, config.metric) for x in interpolated]
    mean = torch.stack(grads).mean(dim=0)
    return torch.einsum("btsd,btnd->sn", corrupted_z - clean_z, mean) * probe.graph.edge_mask_on(mean.device)
