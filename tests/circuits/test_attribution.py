"""EAP-IG: the fast engine equals a slow per-head-copy reference on every architecture; exact patching and
activations-IG equal their float64 oracles (one pass per edge; one pass per group and step)."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.circuits.attribution import AttributionConfig, attribute_batch
from ftcircuits.circuits.exact import exact_scores
from ftcircuits.circuits.interventions import source_means
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.reference import reference_scores
from ftcircuits.encoding import pad_prompts
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.hooks import module_hooks
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


@pytest.mark.parametrize("shape", sorted(TINY_OVERRIDES))
@pytest.mark.parametrize("metric", ["kl", "logit_diff"])
def test_fast_scores_equal_the_slow_reference(shape, metric):
    model = tiny_random(shape)
    batch = random_pairs()
    config = AttributionConfig(method="eap-ig-inputs", steps=3, metric=metric)
    probe = ModelProbe(model, describe_architecture(model.config))
    fast = attribute_batch(probe, batch, config)
    slow = reference_scores(model, batch, config)
    assert fast.abs().max() > 0
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("method", ["eap", "clean-corrupted"])
def test_other_methods_equal_the_reference(method):
    model = tiny_random("pythia-1.4b-deduped")
    batch = random_pairs(1)
    config = AttributionConfig(method=method, metric="prob")
    fast = attribute_batch(ModelProbe(model, describe_architecture(model.config)), batch, config)
    torch.testing.assert_close(fast, reference_scores(model, batch, config), rtol=1e-6, atol=1e-10)


def new_method_scores(shape, method, intervention):
    model = tiny_random(shape)
    batch = random_pairs(4)
    probe = ModelProbe(model, describe_architecture(model.config))
    means = source_means(probe, [random_pairs(5), batch]) if intervention == "mean" else None
    config = AttributionConfig(method=method, steps=3, metric="kl", intervention=intervention)
    return attribute_batch(probe, batch, config, means), reference_scores(model, batch, config, means)


def assert_matches_oracle(fast, slow, shape):
    """Edge by edge to 1e-6 relative. Llama's RMSNorm rounds its input to float32 even in a float64
    model, so two computations of one value may differ there by a float32 rounding (~1e-7 relative)."""
    atol = 1e-7 * slow.abs().max().item() if shape == "tinyllama-1.1b" else 1e-10
    assert fast.abs().max() > 0
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("shape", sorted(TINY_OVERRIDES))
@pytest.mark.parametrize("method", ["eap-ig-activations", "exact"])
def test_new_methods_equal_their_float64_oracle(shape, method):
    fast, slow = new_method_scores(shape, method, "patching")
    assert_matches_oracle(fast, slow, shape)


@pytest.mark.parametrize("intervention", ["zero", "mean"])
@pytest.mark.parametrize("method", ["eap", "eap-ig-activations", "exact"])
def test_interventions_equal_the_oracle(method, intervention):
    fast, slow = new_method_scores("pythia-1.4b-deduped", method, intervention)
    assert_matches_oracle(fast, slow, "pythia-1.4b-deduped")


def test_exact_scores_do_not_depend_on_how_many_edges_share_a_pass():
    model = tiny_random("gpt2")
    batch = random_pairs(6)
    probe = ModelProbe(model, describe_architecture(model.config))
    config = AttributionConfig(method="exact", metric="logit_diff")
    one = exact_scores(probe, batch, config, copies=1)
    torch.testing.assert_close(exact_scores(probe, batch, config, copies=7), one, rtol=1e-9, atol=1e-14)
    assert not one[~probe.graph.edge_mask].any()


def test_activation_ig_of_a_group_sums_to_the_metric_change_of_replacing_it():
    """Completeness per source group: with many steps, the scores of a layer's heads' edges sum to the
    loss change of setting those heads' outputs to the corrupted ones (everything else clean)."""
    model = tiny_random("pythia-1.4b-deduped")
    batch = random_pairs(7)
    probe = ModelProbe(model, describe_architecture(model.config))
    config = AttributionConfig(method="eap-ig-activations", steps=200, metric="logit_diff")
    scores = attribute_batch(probe, batch, config)
    heads = slice(probe.graph.head_source(1, 0), probe.graph.mlp_source(1))
    corrupted_z, _ = probe.source_outputs(batch.clean, batch.corrupted_ids)
    value = corrupted_z[:, :, heads].sum(dim=2) + probe.attention_outs[1].bias
    args = (batch.answers, batch.corrupted_answers)
    with torch.no_grad(), module_hooks([(probe.attention_outs[1], lambda m, i, o: value)]):
        replaced = probe.run(batch.clean)
    clean = probe.run(batch.clean)
    change = metric_loss("logit_diff", replaced, clean, *args) - metric_loss(
        "logit_diff", clean, clean, *args
    )
    assert scores[heads].sum().item() == pytest.approx(change.sum().item(), rel=1e-3)


def test_input_methods_take_patching_only_and_mean_needs_means():
    with pytest.raises(ValueError, match="intervention must be 'patching'"):
        AttributionConfig(method="eap-ig-inputs", intervention="zero")
    with pytest.raises(ValueError, match="intervention"):
        AttributionConfig(method="eap", intervention="resample")
    model = tiny_random("gpt2")
    probe = ModelProbe(model, describe_architecture(model.config))
    with pytest.raises(ValueError, match="means"):
        attribute_batch(probe, random_pairs(), AttributionConfig(method="exact", intervention="mean"))


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


@pytest.mark.slow  # 256 pairs through the shipped tiny model in bf16, which CPUs run slowly: minutes
def test_bf16_activations_cost_nothing_and_bf16_scores_rank_edges_as_float32_ones():
    """A bf16 model's activations kept in bf16 (scores summed in float32) rank edges as float32 activations
    do; and over the default 256 examples, the bf16 model ranks the shipped tiny model's edges as its
    float32 self (Spearman 0.982; the bf16 forward itself, not the storage, makes the difference)."""
    from scipy.stats import spearmanr

    from ftcircuits.circuits.pairs import pair_batches
    from ftcircuits.models.loader import load_model
    from ftcircuits.tasks.dataset import build_dataset
    from ftcircuits.tasks.spec import TaskSpec

    loaded = load_model("tiny")
    items, _ = build_dataset(TaskSpec(name="addsub", range=100).family(), loaded.tokenizer, 256, seed=0)
    batches = pair_batches(loaded.tokenizer, items, 64, "cpu")
    config = AttributionConfig()
    full = ModelProbe(loaded.model, loaded.architecture)
    mask = full.graph.edge_mask
    reference = sum(attribute_batch(full, batch, config) for batch in batches)[mask]
    half = ModelProbe(loaded.model.to(torch.bfloat16), loaded.architecture)
    assert half.activation_dtype == torch.bfloat16 and half.score_dtype == torch.float32
    scores = sum(attribute_batch(half, batch, config) for batch in batches)
    assert scores.dtype == torch.float32
    assert spearmanr(reference.numpy(), scores[mask].numpy()).statistic >= 0.98

    half.activation_dtype = torch.float32  # the same bf16 model, its activations held in float32
    wide = attribute_batch(half, batches[0], config)[mask]
    narrow = attribute_batch(ModelProbe(half.model, loaded.architecture), batches[0], config)[mask]
    assert spearmanr(wide.numpy(), narrow.numpy()).statistic >= 0.9999 and not torch.equal(wide, narrow)
