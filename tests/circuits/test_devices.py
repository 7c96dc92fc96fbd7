"""Circuits on any device, checked without a GPU: every entry point computes where its data is.

Issue 17: on a GPU, ``faithfulness_curve`` crashed because ``top_edges`` mixed CUDA scores with the CPU
``graph.edge_mask`` ("Expected all tensors to be on the same device, cuda:0 and cpu"), so every circuit
discovered with ``curve=True`` failed. These tests rebuild that mismatch on the CPU with PyTorch's
``meta`` device (shapes, no data):

- The graph's home mask on meta: ``Graph.edge_mask`` is patched to a meta tensor while the model,
  batches and scores stay on the CPU. Code that still combines ``graph.edge_mask`` with real data
  raises a device-mismatch RuntimeError ("Tensor on device cpu is not on the expected device meta!"),
  as the CPU mask did beside CUDA scores (indexing with it raises meta's NotImplementedError for
  ``nonzero``). Code that asks ``graph.edge_mask_on(x.device)`` gets a real CPU mask and must give
  exactly the results of a run without the patch. Before the fix, ``top_edges`` raised here, at its
  ``torch.where(graph.edge_mask, ...)``, and with it ``select_circuit``, ``faithfulness_curve`` and
  ``discover_circuit``.
- The default device on meta, in the same runs (but discovery's, whose ``pair_batches`` pads on the
  host): a helper tensor made without an explicit device (``torch.tensor(-1.0)``, ``torch.zeros(...)``)
  lands on meta beside the CPU data and raises, as a CPU-default tensor does beside CUDA data.
- The model and scores on meta, the graph on the CPU: the entry points that need only shapes return
  meta tensors of the right shape (the others need data and are covered above).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch

from ftcircuits.circuits.attribution import AttributionConfig, attribute_batch
from ftcircuits.circuits.compare import circuit_similarity, critical_layers, edge_changes, layer_scores
from ftcircuits.circuits.discover import discover_circuit
from ftcircuits.circuits.evaluation import circuit_evaluation, faithfulness_curve, patched_logits
from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.io import circuit_mask, edges_table, read_circuit, write_circuit
from ftcircuits.circuits.merge import merge_circuits
from ftcircuits.circuits.nodes import (
    exact_node_scores,
    node_faithfulness_curve,
    outgoing_sums,
    select_node_circuit,
)
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.reference import reference_scores
from ftcircuits.circuits.selection import (
    Selection,
    greedy_edges,
    nodes_in_circuit,
    prune_dead_nodes,
    select_circuit,
    top_edges,
)
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.loader import LoadedModel, load_model
from ftcircuits.tasks.dataset import build_dataset
from ftcircuits.tasks.spec import TaskSpec
from tests.circuits.test_attribution import random_pairs
from tests.circuits.tiny_models import TINY_OVERRIDES, tiny_random

SHAPES = sorted(TINY_OVERRIDES)
BUDGETS = (0.2, 1.0)
CONFIG = AttributionConfig(steps=2)
EAP = AttributionConfig(method="eap")  # one gradient: the slow reference runs it fast enough
EXACT = AttributionConfig(method="exact")


# --- the patches -------------------------------------------------------------------------------
def put_home_mask_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``graph.edge_mask`` a meta tensor of the mask's shape, for every graph."""

    def meta_mask(graph: Graph) -> torch.Tensor:
        return torch.zeros(graph.n_sources, graph.n_destinations, dtype=torch.bool, device="meta")

    monkeypatch.setattr(Graph, "edge_mask", property(meta_mask))


@pytest.fixture()
def home_mask_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """``graph.edge_mask`` on meta while the test's data is on the CPU."""
    put_home_mask_on_meta(monkeypatch)


@pytest.fixture()
def default_device_meta() -> Iterator[None]:
    """``meta`` as the default device while the test's data is on the CPU."""
    with torch.device("meta"):
        yield


# --- running every entry point -----------------------------------------------------------------
def batch_results(probe: ModelProbe, batches: list[PairBatch]) -> dict[str, object]:
    """Run every circuits entry point that takes a probe, batches, scores or a circuit; return the
    results by name."""
    graph = probe.graph
    scores = attribute_batch(probe, batches[0], CONFIG) + attribute_batch(probe, batches[1], CONFIG)
    results: dict[str, object] = {
        "scores": scores,
        "reference": reference_scores(probe.model, batches[0], EAP),
    }
    for method in ("top", "greedy"):
        for prune in (True, False):
            circuit = select_circuit(scores, graph, method, budget=0.2, prune=prune)
            results[f"select_circuit {method} prune={prune}"] = circuit
    circuit = results["select_circuit top prune=True"]
    table = edges_table(scores, circuit, graph)
    return results | {
        "top_edges": top_edges(scores, graph, 12),
        "greedy_edges": greedy_edges(scores, graph, 12),
        "prune_dead_nodes": prune_dead_nodes(results["select_circuit greedy prune=False"], graph),
        "nodes_in_circuit": nodes_in_circuit(circuit, graph),
        "patched_logits": patched_logits(probe, batches[0], circuit),
        "circuit_evaluation": circuit_evaluation(probe, batches, circuit, "kl"),
        "faithfulness_curve": faithfulness_curve(probe, batches[:1], scores, "logit_diff", BUDGETS),
        "outgoing_sums": outgoing_sums(scores, graph),
        "exact_node_scores": exact_node_scores(probe, batches[0], EXACT, copies=3),
        "select_node_circuit": select_node_circuit(outgoing_sums(scores, graph), graph, budget=0.3),
        "node_faithfulness_curve": node_faithfulness_curve(
            probe, batches[:1], outgoing_sums(scores, graph), "logit_diff", BUDGETS
        ),
        "edges_table": table,
        "circuit_mask": circuit_mask(table, graph),
        "n_edges": graph.n_edges,
        "edge_names": graph.edge_names(),
    }


def discovery_results(loaded: LoadedModel, items: pl.DataFrame, out: Path) -> dict[str, object]:
    """Discover a circuit with its curve, write and read it, compare and merge it with a greedy one;
    return the results by name."""
    found = discover_circuit(loaded, items, CONFIG, Selection(budget=0.1), batch_size=4, curve=True)
    greedy = select_circuit(found.scores, found.graph, "greedy", budget=0.05, prune=False)
    tables = [
        edges_table(found.scores, found.circuit, found.graph),
        edges_table(found.scores, greedy, found.graph),
    ]
    write_circuit(out / "top", tables[0], {"task": "addsub"})
    edges, meta = read_circuit(out / "top")
    changes = edge_changes(*tables)
    layers = layer_scores(changes, loaded.architecture.layers)
    return {
        "found": (
            found.scores,
            found.circuit,
            found.metrics,
            found.nodes,
            found.curve,
            found.node_scores,
            found.node_curve,
        ),
        "read_circuit": (edges, meta),
        "circuit_mask": circuit_mask(edges, found.graph),
        "circuit_similarity": circuit_similarity(*tables),
        "edge_changes": changes,
        "layer_scores": layers,
        "critical_layers": critical_layers(layers, k=2),
        "merge_circuits": merge_circuits(tables, edges=int(greedy.sum())),
    }


def assert_identical(expected: object, got: object, where: str = "") -> None:
    """Assert equal values, tensors equal in device, dtype and every element."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert (got.device, got.dtype) == (expected.device, expected.dtype), where
        assert torch.equal(got, expected), where
    elif isinstance(expected, pl.DataFrame):
        assert isinstance(got, pl.DataFrame) and got.equals(expected), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key, value in expected.items():
            assert_identical(value, got[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert type(got) is type(expected) and len(got) == len(expected), where
        for index, (value, other) in enumerate(zip(expected, got, strict=True)):
            assert_identical(value, other, f"{where}[{index}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(got, float) and math.isnan(got), where
    else:
        assert got == expected, where


# --- the runs without patches ------------------------------------------------------------------
@dataclass(frozen=True)
class TinyRun:
    """A tiny random model's probe, two batches and every entry point's results on them, unpatched."""

    probe: ModelProbe
    batches: list[PairBatch]
    results: dict[str, object]


@pytest.fixture(scope="module", params=SHAPES)
def tiny_run(request: pytest.FixtureRequest) -> TinyRun:
    model = tiny_random(request.param)
    probe = ModelProbe(model, describe_architecture(model.config))
    batches = [random_pairs(0), random_pairs(1, lengths=(5, 7))]
    return TinyRun(probe, batches, batch_results(probe, batches))


@dataclass(frozen=True)
class ShippedRun:
    """The shipped tiny model, a few real task items and the discovery's results on them, unpatched."""

    loaded: LoadedModel
    items: pl.DataFrame
    results: dict[str, object]


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory: pytest.TempPathFactory) -> ShippedRun:
    loaded = load_model("tiny")
    items, _ = build_dataset(TaskSpec(name="addsub", range=100).family(), loaded.tokenizer, 60, seed=0)
    items = items.head(4)
    return ShippedRun(loaded, items, discovery_results(loaded, items, tmp_path_factory.mktemp("unpatched")))


# --- the tests -----------------------------------------------------------------------------------
def test_edge_mask_on_builds_the_mask_on_the_device_asked_for(monkeypatch):
    graph = Graph(layers=3, heads=3, kv_heads=1, parallel_blocks=True)  # no other test builds its mask
    put_home_mask_on_meta(monkeypatch)
    assert graph.edge_mask.device.type == "meta"
    # built on the CPU, not copied from the home mask (which holds no data now)
    mask = graph.edge_mask_on("cpu")
    assert mask.device.type == "cpu" and mask.dtype == torch.bool
    # per layer, q/k/v (3 + 1 + 1) and the MLP read the 1, 5, 9 sources before it; the logits read all 13
    assert int(mask.sum()) == graph.n_edges == (5 + 1) * (1 + 5 + 9) + 13
    assert mask[0].all() and not mask[graph.head_source(0, 0), graph.mlp_destination(0)]  # parallel
    assert mask is graph.edge_mask_on(torch.device("cpu"))  # built once per device
    assert len(graph.edge_names()) == graph.n_edges
    on_meta = graph.edge_mask_on("meta")
    assert on_meta.device.type == "meta" and on_meta.shape == mask.shape


def test_entry_points_use_no_mask_from_another_device_and_no_default_device(
    tiny_run, home_mask_on_meta, default_device_meta
):
    assert_identical(tiny_run.results, batch_results(tiny_run.probe, tiny_run.batches))


@pytest.mark.slow  # the curve evaluates eleven circuits on the shipped model, twice
def test_discovery_files_comparison_and_merge_use_no_mask_from_another_device(
    shipped_run, home_mask_on_meta, tmp_path
):
    # (not under a meta default device: pair_batches tokenizes and pads on the host, then moves the batch)
    assert_identical(shipped_run.results, discovery_results(shipped_run.loaded, shipped_run.items, tmp_path))


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_only_entry_points_run_on_meta(shape):
    model = tiny_random(shape).to("meta")
    probe = ModelProbe(model, describe_architecture(model.config))
    graph = probe.graph  # its edge_mask is the usual CPU mask
    batch = random_pairs().to("meta")
    for scores in (attribute_batch(probe, batch, CONFIG), reference_scores(model, batch, EAP)):
        assert scores.device.type == "meta" and scores.shape == (graph.n_sources, graph.n_destinations)
        chosen = select_circuit(scores, graph, "top", budget=0.2, prune=False)
        assert chosen.device.type == "meta" and chosen.shape == scores.shape and chosen.dtype == torch.bool
        nodes = outgoing_sums(scores, graph)
        assert nodes.device.type == "meta" and nodes.shape == (graph.n_sources,)
        chosen = select_node_circuit(nodes, graph, budget=0.2)
        assert chosen.device.type == "meta" and chosen.shape == scores.shape and chosen.dtype == torch.bool
    nodes = exact_node_scores(probe, batch, EXACT)
    assert nodes.device.type == "meta" and nodes.shape == (graph.n_sources,)
    # These need data, so the CPU tests above cover them: patched_logits (``removed.any()`` decides
    # whether to patch at all) and with it circuit_evaluation and faithfulness_curve (``.item()``),
    # greedy_edges (a Python heap of magnitudes), prune_dead_nodes (repeats until ``torch.equal``),
    # nodes_in_circuit, edges_table and discover_circuit (names and numbers of the chosen edges).
