"""EAP-IG: the fast engine equals a slow per-head-copy reference on every architecture."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.circuits.attribution import AttributionConfig, ModelProbe, PairBatch, attribute_batch
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.finetune.encoding import pad_prompts
from ftcircuits.models.architecture import describe_architecture
from tests.circuits.tiny_models import TINY_OVERRIDES, VOCAB, tiny_random


def random_pairs(seed: int = 0, lengths=(6, 4, 5)) -> PairBatch:
    """Right-padded clean prompts of different lengths and corruptions of equal length."""
    gen = torch.Generator().manual_seed(seed)
    clean = [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths]
    corrupted = [row[:] for row in clean]
    for row in corrupted:
        row[-2] = (row[-2] + 7) % (VOCAB - 3) + 3
    batch = pad_prompts(clean, pad_id=0, side="right")
    corrupted_ids = pad_prompts(corrupted, pad_id=0, side="right").input_ids
    answers = torch.randint(3, VOCAB, (len(lengths),), generator=gen)
    return PairBatch(batch, corrupted_ids, answers, (answers + 1) % VOCAB)


def reference_gradients(
    probe: ModelProbe, batch: PairBatch, embed, clean_logits, metric: str
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

    hooks = [probe.embed.register_forward_hook(lambda m, i, o: embed.clone().requires_grad_(True))]
    for layer in range(probe.arch.layers):
        norm = probe.attention_norms[layer]
        hooks.append(norm.register_forward_pre_hook(lambda m, args: stash.__setitem__("x", args[0])))
        for projection in probe.projections[layer]:
            hooks.append(projection.module.register_forward_hook(per_head_outputs(projection, norm)))
        hooks.append(probe.mlp_norms[layer].register_forward_pre_hook(own_copy))
    hooks.append(probe.final_norm.register_forward_pre_hook(own_copy))
    try:
        logits = probe.run(batch.clean)
        loss = metric_loss(metric, logits, clean_logits, batch.answers, batch.corrupted_answers).sum()
        grads = torch.autograd.grad(loss, copies)  # forward order = destination order
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([g.reshape(*batch.clean.input_ids.shape, -1) for g in grads], dim=2)


def slow_scores(model, batch: PairBatch, config: AttributionConfig) -> torch.Tensor:
    """Reference scores: per-destination residual copies, plain autograd, one pass per step."""
    probe = ModelProbe(model, describe_architecture(model.config))
    clean_z, clean_logits = probe.source_outputs(batch.clean, batch.clean.input_ids)
    corrupted_z, _ = probe.source_outputs(batch.clean, batch.corrupted_ids)
    clean_embed, corrupted_embed = clean_z[:, :, 0], corrupted_z[:, :, 0]
    grads = [
        reference_gradients(
            probe,
            batch,
            corrupted_embed + alpha * (clean_embed - corrupted_embed),
            clean_logits,
            config.metric,
        )
        for alpha in config.alphas()
    ]
    mean = torch.stack(grads).mean(dim=0)
    return torch.einsum("btsd,btnd->sn", corrupted_z - clean_z, mean) * probe.graph.edge_mask


@pytest.mark.parametrize("shape", sorted(TINY_OVERRIDES))
@pytest.mark.parametrize("metric", ["kl", "logit_diff"])
def test_fast_scores_equal_the_slow_reference(shape, metric):
    model = tiny_random(shape)
    batch = random_pairs()
    config = AttributionConfig(method="eap-ig-inputs", steps=3, metric=metric)
    probe = ModelProbe(model, describe_architecture(model.config))
    fast = attribute_batch(probe, batch, config)
    slow = slow_scores(model, batch, config)
    assert fast.abs().max() > 0
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("method", ["eap", "clean-corrupted"])
def test_other_methods_equal_the_reference(method):
    model = tiny_random("pythia-1.4b-deduped")
    batch = random_pairs(1)
    config = AttributionConfig(method=method, metric="prob")
    fast = attribute_batch(ModelProbe(model, describe_architecture(model.config)), batch, config)
    torch.testing.assert_close(fast, slow_scores(model, batch, config), rtol=1e-6, atol=1e-10)


def test_step_conventions_are_named_and_differ():
    assert AttributionConfig(steps=4, step_convention="k=1..m").alphas() == [0.25, 0.5, 0.75, 1.0]
    assert AttributionConfig(steps=4, step_convention="k=0..m-1").alphas() == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="step convention"):
        AttributionConfig(step_convention="midpoint")


@pytest.mark.parametrize("shape", ["pythia-1.4b-deduped", "gpt2"])
def test_completeness_input_scores_sum_to_the_metric_change(shape):
    model = tiny_random(shape)
    batch = random_pairs(2)
    probe = ModelProbe(model, describe_architecture(model.config))
    scores = attribute_batch(probe, batch, AttributionConfig(steps=400, metric="logit_diff"))
    with torch.no_grad():
        clean = probe.run(batch.clean)
        corrupted = probe.run(batch.clean, batch.corrupted_ids)
        change = (
            metric_loss("logit_diff", corrupted, clean, batch.answers, batch.corrupted_answers)
            - metric_loss("logit_diff", clean, clean, batch.answers, batch.corrupted_answers)
        ).sum()
    assert scores[0].sum().item() == pytest.approx(change.item(), rel=1e-2)


@pytest.mark.parametrize("shape", sorted(TINY_OVERRIDES))
def test_residual_identity_out_equals_in_plus_node_outputs(shape):
    model = tiny_random(shape)
    arch = describe_architecture(model.config)
    probe = ModelProbe(model, arch)
    batch = random_pairs(3).clean
    z, _ = probe.source_outputs(batch, batch.input_ids)
    with torch.no_grad():
        hidden = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
            output_hidden_states=True,
        ).hidden_states  # fmt: skip
    out_bias = probe.attention_outs[0].bias
    nodes = z[:, :, 1 : probe.graph.sources_before(1)].sum(dim=2) + (0 if out_bias is None else out_bias)
    mask = batch.attention_mask[:, :, None].bool()
    torch.testing.assert_close(
        torch.where(mask, hidden[1], 0), torch.where(mask, hidden[0] + nodes, 0), rtol=1e-9, atol=1e-9
    )
