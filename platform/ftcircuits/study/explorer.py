"""The explorer's data, gathered from a run's circuit files: every checkpoint's edge scores and node scores,
its circuit at each budget (the file's own at the file's budget; ``select_circuit`` with the file's rule at
the others, so the page shows exactly the library's circuits), the exact-patching scores where a
ground-truth directory holds them, and the analysis' critical layers; ``write_explorer`` renders the page."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.io import circuit_exists, circuit_mask, node_scores_of, read_circuit
from ftcircuits.circuits.selection import select_circuit
from ftcircuits.report.explorer import PARTS, ExplorerData, Snapshot, render_explorer
from ftcircuits.study.dynamics import HEADLINE_BUDGETS, critical_by_variant, read_summary
from ftcircuits.study.over_run import read_run_circuit

EXPLORER_FILE = "explorer.html"
CRITICAL_RULES = {"top-k": "critical_topk", "mean+std": "critical_mean_std"}
_HEAD = re.compile(r"a(\d+)\.h(\d+)")


def node_score_map(meta: dict, edges: pl.DataFrame) -> dict[str, float]:
    """Return a circuit's node scores by name (``circuits.io.node_scores_of``: the JSON's, or the gradient
    methods' row sums for older files); empty for an older exact circuit, whose node scores are unknown."""
    table = node_scores_of(meta, edges)
    return {} if table is None else dict(table.iter_rows())


def graph_nodes(graph: Graph) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return the graph's nodes (its sources, then ``logits``) with each one's layer (-1: input, ``layers``:
    logits) and head (-1: not a head)."""
    names = [*graph.source_names, "logits"]
    layer, head = np.full(len(names), -1), np.full(len(names), -1)
    for index, name in enumerate(names):
        if found := _HEAD.fullmatch(name):
            layer[index], head[index] = int(found.group(1)), int(found.group(2))
        elif name.startswith("m"):
            layer[index] = int(name[1:])
        elif name == "logits":
            layer[index] = graph.layers
    return names, layer, head


def edge_arrays(graph: Graph, node_names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return per edge, in the graph's edge order (``edge_names``, the mask's row-major order): the source
    node, the destination node (q/k/v collapsed into the head) and the destination's part (``PARTS``)."""
    position = {name: index for index, name in enumerate(node_names)}
    destination_node = np.array([position[graph.destination_node(d)] for d in range(graph.n_destinations)])
    destination_part = np.array([PARTS.index(name[-2]) if name.endswith(">") else 0
                                 for name in graph.destination_names])  # fmt: skip
    sources, destinations = graph.edge_mask_on("cpu").numpy().nonzero()
    return (
        sources.astype(np.uint16),
        destination_node[destinations].astype(np.uint16),
        destination_part[destinations].astype(np.uint8),
    )


def _node_vector(scores: dict[str, float], node_names: list[str]) -> np.ndarray:
    return np.array([scores.get(name, np.nan) for name in node_names], dtype=np.float32)


def snapshot_of(
    label: str,
    step: int | None,
    circuit: tuple[pl.DataFrame, dict],
    graph: Graph,
    budgets: Sequence[float],
    node_names: list[str],
    exact: tuple[pl.DataFrame, dict] | None = None,
) -> Snapshot:
    """Return one circuit file's snapshot: its scores in edge order, its node scores, its circuit at every
    budget (the file's own circuit at the file's budget, ``select_circuit`` with the file's rule at the
    others), and the scores of ``exact``, the same checkpoint's exact-patching circuit, when given."""
    edges, meta = circuit
    scores, in_circuit = circuit_mask(edges, graph)
    mask = graph.edge_mask_on("cpu")
    rule = meta["selection"]
    circuits = {}
    for budget in budgets:
        chosen = in_circuit if budget == rule["budget"] else select_circuit(
            scores, graph, rule["method"], budget=budget, prune=rule["prune"]
        )  # fmt: skip
        circuits[budget] = np.flatnonzero(chosen[mask].numpy()).astype(np.uint32)
    exact_scores = exact_nodes = None
    if exact is not None:
        exact_scores = circuit_mask(exact[0], graph)[0][mask].numpy()
        exact_nodes = _node_vector(node_score_map(exact[1], exact[0]), node_names)
    return Snapshot(
        label=label, step=step, scores=scores[mask].numpy(), circuits=circuits,
        node_scores=_node_vector(node_score_map(meta, edges), node_names),
        exact_scores=exact_scores, exact_node_scores=exact_nodes,
    )  # fmt: skip


def file_selection(metas: Sequence[dict]) -> dict:
    """Return the selection rule (method, budget, prune) every circuit file shares; ValueError if they
    differ (the page compares circuits at one budget)."""
    rules = {tuple(sorted(meta["selection"].items())) for meta in metas}
    if len(rules) != 1:
        raise ValueError(f"the circuit files were selected with different rules: {sorted(rules)}")
    return dict(rules.pop())


def critical_layers_of(layer_scores: pl.DataFrame | None) -> dict[str, dict[str, list[int]]]:
    """Return rule -> layer-score variant -> critical layers, from the analysis' layer_scores table."""
    if layer_scores is None:
        return {}
    return {rule: critical_by_variant(layer_scores, column) for rule, column in CRITICAL_RULES.items()}


def explorer_data(
    out: Path,
    graph: Graph,
    title: str,
    layer_scores: pl.DataFrame | None = None,
    similarity: pl.DataFrame | None = None,
    budgets: Sequence[float] = HEADLINE_BUDGETS,
    ground_truth: Path | None = None,
    others: Mapping[str, Path] | None = None,
) -> ExplorerData:
    """Return the explorer's data of the checkpoint circuits in ``out`` (``<run>/circuits/<hash>``) over
    ``graph``, at ``budgets`` and the files' own budget.

    ``ground_truth``: the directory of the same checkpoints' exact-patching circuits, if any (a checkpoint
    without one there has no exact scores). ``others``: label -> circuit file stem of circuits shown only side
    by side (e.g. a CircuitLoRA run's final checkpoint), over the same graph. ``layer_scores`` and
    ``similarity``: the analysis' tables (critical layers; accuracy and faithfulness per step).
    """
    rows = read_summary(out).filter(pl.col("model") == "checkpoint").sort("step")
    if rows.is_empty():
        raise ValueError(f"no checkpoint circuits in {out}: run jobs.circuits --run first")
    keys = dict(rows.select("step", "key").iter_rows())
    files = [(step, read_run_circuit(out, key)) for step, key in keys.items()]
    extra = {label: read_circuit(Path(stem), graph=graph) for label, stem in (others or {}).items()}
    rule = file_selection([meta for _, (_, meta) in files] + [meta for _, meta in extra.values()])
    chosen = sorted({*budgets, rule["budget"]})
    names, layer, head = graph_nodes(graph)

    def exact_of(step: int) -> tuple[pl.DataFrame, dict] | None:
        stem = None if ground_truth is None else Path(ground_truth) / keys[step]
        return read_circuit(stem, graph=graph) if stem is not None and circuit_exists(stem) else None

    snapshots = [snapshot_of(f"step {step}", step, circuit, graph, chosen, names, exact_of(step))
                 for step, circuit in files]  # fmt: skip
    snapshots += [snapshot_of(label, None, circuit, graph, chosen, names) for label, circuit in extra.items()]
    sources, destinations, parts = edge_arrays(graph, names)
    per_step = [] if similarity is None else similarity.select(
        "step", *[c for c in ("accuracy", "faithfulness") if c in similarity.columns]
    ).fill_nan(None).to_dicts()  # fmt: skip
    return ExplorerData(
        title=title, layers=graph.layers, heads=graph.heads, node_names=names, node_layer=layer,
        node_head=head, edge_source=sources, edge_destination=destinations, edge_part=parts,
        snapshots=snapshots, budgets=chosen, budget=rule["budget"],
        selection=f"{rule['method']}{' (dead nodes pruned)' if rule['prune'] else ''}",
        critical=critical_layers_of(layer_scores), similarity=per_step,
    )  # fmt: skip


def write_explorer(out: Path, graph: Graph, title: str, path: Path, **options: object) -> Path:
    """Write the explorer page of the circuits in ``out`` to ``path`` (``explorer_data``'s options)."""
    return render_explorer(explorer_data(out, graph, title, **options), path)
