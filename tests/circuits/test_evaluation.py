"""Evaluation: full circuit = clean model, empty = corrupted model, and a brute-force recomputation."""

from __future__ import annotations

import pytest
import torch

from ftcircuits.circuits.attribution import AttributionConfig
from ftcircuits.circuits.evaluation import circuit_evaluation, faithfulness_curve, patched_logits
from ftcircuits.circuits.exact import exact_scores
from ftcircuits.circuits.interventions import source_means
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.selection import select_circuit
from ftcircuits.models.architecture import describe_architecture
from tests.circuits.test_attribution import random_pairs
from tests.circuits.tiny_models import TINY_OVERRIDES, tiny_random


def probe_of(shape: str) -> ModelProbe:
    model = tiny_random(shape)
    return ModelProbe(model, describe_architecture(model.config))


@pytest.mark.parametrize("shape", sorted(TINY_OVERRIDES))
def test_full_circuit_is_the_clean_model_and_empty_is_the_corrupted(shape):
    probe = probe_of(shape)
    batch = random_pairs(4)
    graph = probe.graph
    with torch.no_grad():
        clean = probe.run(batch.clean)
        corrupted = probe.run(batch.clean, batch.corrupted_ids)
    torch.testing.assert_close(patched_logits(probe, batch, graph.edge_mask), clean, rtol=0, atol=0)
    empty = torch.zeros_like(graph.edge_mask)
    torch.testing.assert_close(patched_logits(probe, batch, empty), corrupted, rtol=1e-9, atol=1e-9)


def explicit_edit(probe: ModelProbe, batch, module, shift: torch.Tensor) -> torch.Tensor:
    """Logits of the clean run with ``shift`` added to ``module``'s input."""
    hook = module.register_forward_pre_hook(lambda m, args: (args[0] + shift.reshape(args[0].shape),))
    try:
        with torch.no_grad():
            return probe.run(batch.clean)
    finally:
        hook.remove()


@pytest.mark.parametrize("shape", ["gpt2", "opt-6.7b"])
def test_removing_one_edge_equals_an_explicit_residual_edit(shape):
    probe = probe_of(shape)
    batch = random_pairs(5)
    graph = probe.graph
    clean_z, _ = probe.source_outputs(batch.clean, batch.clean.input_ids)
    corrupted_z, _ = probe.source_outputs(batch.clean, batch.corrupted_ids)
    delta = corrupted_z - clean_z

    # m1 -> logits: only the final residual moves, by z_m1(corrupted) - z_m1(clean)
    circuit = graph.edge_mask.clone()
    circuit[graph.mlp_source(1), graph.logits_destination] = False
    expected = explicit_edit(probe, batch, probe.final_norm, delta[:, :, graph.mlp_source(1)])
    torch.testing.assert_close(patched_logits(probe, batch, circuit), expected, rtol=1e-10, atol=1e-10)

    # input -> m0: only the first MLP's input moves, by the embedding difference
    circuit = graph.edge_mask.clone()
    circuit[0, graph.mlp_destination(0)] = False
    expected = explicit_edit(probe, batch, probe.mlp_norms[0], delta[:, :, 0])
    torch.testing.assert_close(patched_logits(probe, batch, circuit), expected, rtol=1e-10, atol=1e-10)


def test_faithfulness_of_full_and_empty_and_the_curve():
    probe = probe_of("pythia-1.4b-deduped")
    batches = [random_pairs(6), random_pairs(7)]
    graph = probe.graph
    full = circuit_evaluation(probe, batches, graph.edge_mask, "logit_diff")
    empty = circuit_evaluation(probe, batches, torch.zeros_like(graph.edge_mask), "logit_diff")
    assert full["faithfulness"] == pytest.approx(1.0) and empty["faithfulness"] == pytest.approx(0.0)
    assert full["faithfulness_paper"] == pytest.approx(100.0)
    assert full["circuit_accuracy"] == full["model_accuracy"]
    scores = torch.randn(graph.n_sources, graph.n_destinations, dtype=torch.float64)
    curve = faithfulness_curve(probe, batches, scores, "logit_diff", budgets=(0.1, 0.5, 1.0))
    assert curve["budgets"] == [0.1, 0.5, 1.0] and len(curve["faithfulness"]) == 3
    assert curve["faithfulness"][-1] == pytest.approx(1.0)
    half = select_circuit(scores, graph, "top", budget=0.5)
    assert curve["faithfulness"][1] == circuit_evaluation(probe, batches, half, "logit_diff")["faithfulness"]
    # the trapezoids over the budgets, by hand
    f1, f2, f3 = curve["faithfulness"]
    assert curve["area"] == pytest.approx(0.4 * (f1 + f2) / 2 + 0.5 * (f2 + f3) / 2, rel=1e-12)
    gap = 0.4 * (abs(1 - f1) + abs(1 - f2)) / 2 + 0.5 * (abs(1 - f2) + abs(1 - f3)) / 2
    assert curve["area_abs_gap"] == pytest.approx(gap, rel=1e-12)


@pytest.mark.parametrize("intervention", ["zero", "mean"])
def test_other_interventions_replace_a_removed_edge_and_keep_the_full_circuit_clean(intervention):
    probe = probe_of("opt-6.7b")
    batch = random_pairs(5)
    graph = probe.graph
    means = source_means(probe, [batch, random_pairs(8)])
    clean_z, _ = probe.source_outputs(batch.clean, batch.clean.input_ids)
    mask = batch.clean.attention_mask[:, :, None]
    replaced = (
        means[graph.mlp_source(0)] * mask if intervention == "mean" else torch.zeros_like(clean_z[:, :, 0])
    )
    with torch.no_grad():
        clean = probe.run(batch.clean)
    full = patched_logits(probe, batch, graph.edge_mask, intervention, means)
    torch.testing.assert_close(full, clean, rtol=0, atol=0)
    circuit = graph.edge_mask.clone()
    circuit[graph.mlp_source(0), graph.logits_destination] = False
    shift = replaced - clean_z[:, :, graph.mlp_source(0)]
    expected = explicit_edit(probe, batch, probe.final_norm, shift)
    got = patched_logits(probe, batch, circuit, intervention, means)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    result = circuit_evaluation(probe, [batch], torch.zeros_like(graph.edge_mask), "kl", intervention, means)
    assert result["faithfulness"] == pytest.approx(0.0)


def test_an_exact_score_is_the_loss_change_of_evaluating_without_that_edge():
    """Two machineries agree: exact patching's stacked copies, and evaluation with one edge removed."""
    probe = probe_of("tinyllama-1.1b")
    batch = random_pairs(9)
    graph = probe.graph
    scores = exact_scores(probe, batch, AttributionConfig(method="exact", metric="kl"))
    with torch.no_grad():
        clean = probe.run(batch.clean)
    for source, destination in [
        (0, 0),
        (2, graph.mlp_destination(1)),
        (3, graph.attention_destinations(1).stop - 1),
    ]:
        circuit = graph.edge_mask.clone()
        circuit[source, destination] = False
        logits = patched_logits(probe, batch, circuit)
        change = (
            metric_loss("kl", logits, clean, batch.answers) - metric_loss("kl", clean, clean, batch.answers)
        ).sum()
        assert scores[source, destination].item() == pytest.approx(
            change.item(), rel=1e-6, abs=1e-7 * scores.abs().max().item()
        )
