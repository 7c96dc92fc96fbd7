"""Node circuits: node scores against direct computations, node selection as a union of edges, the
node-level curve, and node scores in the circuit file."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from ftcircuits.circuits.attribution import AttributionConfig, attribute_batch
from ftcircuits.circuits.discover import circuit_metadata, discover_circuit
from ftcircuits.circuits.evaluation import circuit_evaluation, patched_logits
from ftcircuits.circuits.interventions import source_means
from ftcircuits.circuits.io import edges_table, node_scores_of, read_circuit, write_circuit
from ftcircuits.circuits.metrics import metric_loss
from ftcircuits.circuits.nodes import (
    DEFAULT_NODE_BUDGETS,
    exact_node_scores,
    node_circuit,
    node_count,
    node_faithfulness_curve,
    outgoing_sums,
    select_node_circuit,
    top_nodes,
)
from ftcircuits.circuits.pairs import pair_batches
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.reference import reference_exact_node_scores
from ftcircuits.circuits.selection import Selection, nodes_in_circuit, prune_dead_nodes
from ftcircuits.circuits.settings import DiscoverySettings
from ftcircuits.models.hooks import module_hooks
from ftcircuits.models.loader import load_model
from ftcircuits.study.over_run import CircuitRunner, circuit_units, run_inputs
from ftcircuits.tasks import build_dataset, task_family
from tests.circuits.test_attribution import random_pairs
from tests.circuits.test_evaluation import probe_of
from tests.circuits.tiny_models import TINY_OVERRIDES


def direct_node_scores(probe: ModelProbe, batch, config: AttributionConfig) -> torch.Tensor:
    """Node scores the direct way: ``delta_u . dL/dz_u`` with the gradient taken at each source's output
    (a zero leaf added to it), averaged over the method's input interpolation steps."""
    graph = probe.graph
    clean_z, clean_logits = probe.source_outputs(batch.clean, batch.clean.input_ids)
    corrupted_z, _ = probe.source_outputs(batch.clean, batch.corrupted_ids)
    shape = (*batch.clean.input_ids.shape, -1)
    modules = [probe.embed]
    owner = [0]  # per source: its module
    for layer in range(probe.arch.layers):
        modules += [probe.attention_outs[layer], probe.mlp_outs[layer]]
        owner += [len(modules) - 2] * probe.arch.heads + [len(modules) - 1]
    total = torch.zeros(graph.n_sources, *clean_z.shape[:2], clean_z.shape[-1], dtype=clean_z.dtype)
    for alpha in config.alphas():
        embed = corrupted_z[:, :, 0] + alpha * (clean_z[:, :, 0] - corrupted_z[:, :, 0])
        leaves = []

        def tap(module, inputs, output, embed=embed, leaves=leaves):
            if module is probe.embed:
                output = embed.reshape(output.shape)
            leaves.append(torch.zeros_like(output, requires_grad=True))
            return output + leaves[-1]

        with module_hooks([(module, tap) for module in modules], []), torch.enable_grad():
            logits = probe.run(batch.clean)
            loss = metric_loss(config.metric, logits, clean_logits, batch.answers, batch.corrupted_answers)
            grads = torch.autograd.grad(loss.sum(), leaves)
        total += torch.stack([grads[owner[s]].reshape(shape) for s in range(graph.n_sources)])
    gradient = total / len(config.alphas())
    delta = (corrupted_z - clean_z).permute(2, 0, 1, 3)
    return (delta * gradient).sum(dim=(1, 2, 3))


@pytest.mark.parametrize("shape", sorted(TINY_OVERRIDES))
@pytest.mark.parametrize("method", ["eap", "clean-corrupted", "eap-ig-inputs"])
def test_gradient_node_scores_are_the_row_sums_of_the_edge_scores(shape, method):
    probe = probe_of(shape)
    batch = random_pairs(3)
    config = AttributionConfig(method=method, steps=3, metric="logit_diff")
    rows = outgoing_sums(attribute_batch(probe, batch, config), probe.graph)
    direct = direct_node_scores(probe, batch, config)
    assert direct.abs().min() > 0
    # Llama's RMSNorm computes in float32 even in a float64 model: what limits the agreement to 1e-6
    torch.testing.assert_close(rows, direct, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("shape", sorted(TINY_OVERRIDES))
@pytest.mark.parametrize("intervention", ["patching", "zero", "mean"])
def test_exact_node_scores_equal_the_slow_reference(shape, intervention):
    probe = probe_of(shape)
    batch = random_pairs(4)
    config = AttributionConfig(method="exact", metric="kl", intervention=intervention)
    means = source_means(probe, [batch]) if intervention == "mean" else None
    slow = reference_exact_node_scores(probe, batch, config, means)
    assert slow.abs().min() > 0
    for copies in (None, 1, 4):  # every node in one pass, one per pass, chunks with a remainder
        fast = exact_node_scores(probe, batch, config, means, copies=copies)
        torch.testing.assert_close(fast, slow, rtol=1e-6, atol=0)


def test_exact_node_score_is_the_loss_change_of_the_circuit_without_the_node():
    """The node and edge views agree: patching a node is removing all its outgoing edges."""
    probe = probe_of("pythia-1.4b-deduped")
    batch = random_pairs(5)
    graph = probe.graph
    config = AttributionConfig(method="exact", metric="logit_diff")
    scores = exact_node_scores(probe, batch, config)
    with torch.no_grad():
        clean = probe.run(batch.clean)
    args = (clean, batch.answers, batch.corrupted_answers)
    for source in range(graph.n_sources):
        circuit = graph.edge_mask.clone()
        circuit[source] = False
        change = metric_loss("logit_diff", patched_logits(probe, batch, circuit), *args).sum()
        change -= metric_loss("logit_diff", clean, *args).sum()
        torch.testing.assert_close(scores[source], change, rtol=1e-9, atol=1e-12)


def test_a_node_circuit_is_the_union_of_its_nodes_edges_and_prunes_to_itself():
    probe = probe_of("gpt2")  # sequential: an MLP reads its own layer's heads
    graph = probe.graph
    names = ["a0.h1", "m0", "a1.h3"]
    chosen = torch.tensor([name in names for name in graph.source_names])
    circuit = node_circuit(chosen, graph)
    assert nodes_in_circuit(circuit, graph) == {*names, "input", "logits"}
    assert torch.equal(prune_dead_nodes(circuit, graph), circuit)  # every node reaches input and logits
    expected = {
        (s, d)
        for s, d in graph.edge_names()
        if s in {*names, "input"} and d.split("<")[0] in {*names, "logits"}
    }
    kept = circuit[graph.edge_mask].tolist()
    assert {pair for pair, keep in zip(graph.edge_names(), kept, strict=True) if keep} == expected
    # input: q/k/v of a0.h1 and a1.h3, m0, logits (8); a0.h1: m0, a1.h3's q/k/v, logits (5); m0: a1.h3's
    # q/k/v, logits (4); a1.h3: logits (1)
    assert len(expected) == 18


def test_all_nodes_give_the_full_graph_and_none_the_direct_path():
    probe = probe_of("pythia-1.4b-deduped")
    graph = probe.graph
    batches = [random_pairs(6)]
    scores = torch.randn(graph.n_sources, dtype=torch.float64)
    full = select_node_circuit(scores, graph, budget=1.0)
    assert torch.equal(full, graph.edge_mask)
    assert circuit_evaluation(probe, batches, full, "logit_diff", "patching")["faithfulness"] == 1.0
    direct = select_node_circuit(scores, graph, nodes=0)
    assert direct.sum() == 1 and direct[0, graph.logits_destination]
    assert nodes_in_circuit(direct, graph) == {"input", "logits"}


def test_top_nodes_and_node_counts():
    graph = probe_of("pythia-1.4b-deduped").graph  # 10 non-input nodes
    scores = torch.tensor([100.0, 0.1, -5.0, 0.3, 2.0, -0.5, 0.0, 0.2, -3.0, 0.4, 1.0])
    assert node_count(graph, budget=0.05) == 1 and node_count(graph, budget=0.3) == 3
    chosen = top_nodes(scores, graph, 3)
    assert [graph.source_names[i] for i in chosen.nonzero().flatten()] == ["input", "a0.h1", "a0.h3", "a1.h2"]
    with pytest.raises(ValueError, match=r"node budget .* must be in \(0, 1\], got 0"):
        node_count(graph, budget=0)
    with pytest.raises(ValueError, match=r"node count must be in \[0, 10\] .* got 11"):
        node_count(graph, nodes=11)
    with pytest.raises(ValueError, match="exactly one"):
        node_count(graph)
    with pytest.raises(ValueError, match=r"node scores must have shape \(11,\), got \(10,\)"):
        top_nodes(scores[1:], graph, 2)


def test_node_curve_evaluates_each_budgets_node_circuit():
    probe = probe_of("pythia-1.4b-deduped")
    graph = probe.graph
    batches = [random_pairs(6), random_pairs(7)]
    scores = torch.randn(graph.n_sources, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    curve = node_faithfulness_curve(probe, batches, scores, "logit_diff", budgets=(0.1, 0.5, 1.0))
    assert curve["budgets"] == [0.1, 0.5, 1.0] and curve["nodes"] == [1, 5, 10]
    expected = []
    for nodes in (1, 5, 10):
        circuit = select_node_circuit(scores, graph, nodes=nodes)
        expected.append(circuit_evaluation(probe, batches, circuit, "logit_diff")["faithfulness"])
    assert curve["faithfulness"] == expected and expected[-1] == 1.0
    assert curve["edges"][-1] == graph.n_edges
    xs, ys = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64), torch.tensor(expected, dtype=torch.float64)
    assert curve["area"] == torch.trapezoid(ys, xs).item()
    assert curve["area_abs_gap"] == torch.trapezoid((1 - ys).abs(), xs).item()


@pytest.fixture()
def addsub_items(tokenizer) -> pl.DataFrame:
    data, _ = build_dataset(task_family("addsub", range=100), tokenizer, 60, seed=0)
    return data.head(6)


@pytest.mark.parametrize("method", ["eap-ig-inputs", "exact"])
def test_discovery_writes_node_scores_and_curve_that_the_reader_returns(
    tmp_path, model_dir, addsub_items, method
):
    loaded = load_model(str(model_dir))
    attribution = AttributionConfig(method=method, steps=2)
    selection = Selection(budget=0.1)
    found = discover_circuit(loaded, addsub_items, attribution, selection, batch_size=4, curve=True)
    graph = found.graph
    if method == "exact":
        probe = ModelProbe(loaded.model, loaded.architecture)
        batches = pair_batches(loaded.tokenizer, addsub_items, 4)
        expected = sum(reference_exact_node_scores(probe, b, attribution) for b in batches) / 6
        torch.testing.assert_close(found.node_scores, expected.to(found.node_scores), rtol=1e-4, atol=1e-7)
    else:
        assert torch.equal(found.node_scores, outgoing_sums(found.scores, graph))
    assert found.node_curve["budgets"] == list(DEFAULT_NODE_BUDGETS)
    assert found.node_curve["faithfulness"][-1] == 1.0
    meta = circuit_metadata(loaded, attribution, selection, found, task="x")
    write_circuit(tmp_path / "c", edges_table(found.scores, found.circuit, graph), meta)
    edges, read = read_circuit(tmp_path / "c")
    assert list(read["node_scores"]) == graph.source_names and read["node_curve"] == found.node_curve
    table = node_scores_of(read, edges)
    assert table["node"].to_list() == graph.source_names
    assert table["score"].to_list() == found.node_scores.double().cpu().tolist()
    # a file written before node scores: gradient methods fall back to the edges' row sums, exact has none
    older = {k: v for k, v in read.items() if k not in ("node_scores", "node_curve")}
    fallback = node_scores_of(older, edges)
    if method == "exact":
        assert fallback is None
    else:
        assert fallback["node"].to_list() == graph.source_names
        sums = torch.tensor(fallback["score"].to_list(), dtype=torch.float64)
        torch.testing.assert_close(sums, found.node_scores.double(), rtol=1e-5, atol=1e-7)


def test_reader_rejects_malformed_node_scores():
    with pytest.raises(ValueError, match="'node_scores' is not an object of node name: number"):
        node_scores_of({"node_scores": ["a0.h0", 1.0]}, pl.DataFrame())


def test_circuit_runner_writes_node_scores_and_the_node_curve_of_a_checkpoint(tmp_path, tiny_run):
    inputs = run_inputs(tiny_run)
    settings = DiscoverySettings(examples=4, batch_size=4, steps=2, curve=True)
    runner = CircuitRunner(inputs.base_model, inputs.data, settings, tmp_path)
    unit = circuit_units(inputs, robustness=False)[-1]
    runner.run(unit)
    edges, meta = read_circuit(tmp_path / unit.key)
    graph = ModelProbe(runner.weights.loaded.model, runner.weights.loaded.architecture).graph
    assert list(meta["node_scores"]) == graph.source_names
    assert meta["node_curve"]["budgets"] == list(DEFAULT_NODE_BUDGETS)
    assert meta["node_curve"]["faithfulness"][-1] == 1.0
    assert node_scores_of(meta, edges)["score"].to_list() == list(meta["node_scores"].values())
