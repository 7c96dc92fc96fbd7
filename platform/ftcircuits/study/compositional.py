"""A compositional task's circuit from its subtasks' circuits: merge, then faithfulness over edge budgets.

The paper's use: the union of the subtasks' circuits stands in for the
compositional task's own circuit. ``merged_budget_curve`` measures how well it
does, on the compositional task's pairs, against the task's own circuit at the
same budgets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

from ftcircuits.circuits.compare import circuit_similarity
from ftcircuits.circuits.discover import circuit_metadata, discover_circuit, discovery_batches
from ftcircuits.circuits.evaluation import circuit_evaluation
from ftcircuits.circuits.io import circuit_exists, circuit_mask, edges_table, read_circuit, write_circuit
from ftcircuits.circuits.merge import merge_circuits
from ftcircuits.circuits.pairs import PairBatch
from ftcircuits.circuits.probe import ModelProbe
from ftcircuits.circuits.selection import edge_count, select_circuit, top_edges
from ftcircuits.config.discovery import CompositionalConfig
from ftcircuits.models.loader import LoadedModel, load_model
from ftcircuits.options import Metric, NodeRule, ScoreRule
from ftcircuits.paths import atomic_file
from ftcircuits.report.circuit_figures import faithfulness_by_budget
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import MANIFEST_FILE, read_items
from ftcircuits.tasks.spec import TaskSpec
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run

SUBTASKS = ("inner", "outer")
PARTS = (*SUBTASKS, "full")  # the two subtasks, then the compositional task itself


def part_items(
    config: CompositionalConfig, loaded: LoadedModel, parts: Sequence[str] = PARTS
) -> dict[str, pl.DataFrame]:
    """Return each part's items (the config's split, ``examples`` of them), building missing datasets."""
    items = {}
    for part in parts:
        spec = TaskSpec(name="compositional", part=part)
        directory = config.data / spec.dataset_name()
        if not (directory / MANIFEST_FILE).is_file():
            make_task_dataset(spec, loaded.tokenizer, config.model, config.data)
        split = read_items(directory, config.discovery.split)
        items[part] = config.discovery.sample(split)
    return items


def part_circuits(
    config: CompositionalConfig,
    loaded: LoadedModel,
    items: dict[str, pl.DataFrame],
    on_part: Callable[[str], None] | None = None,
) -> dict[str, pl.DataFrame]:
    """Discover each part's circuit (the parts of ``items``), write it to ``<out>/compositional-<part>``;
    return the edges tables."""
    discovery = config.discovery
    attribution, selection = discovery.attribution_config(), discovery.selection_config()
    circuits = {}
    for part in items:
        found = discover_circuit(loaded, items[part], attribution, selection, discovery.batch_size)
        circuits[part] = edges_table(found.scores, found.circuit, found.graph)
        meta = circuit_metadata(loaded, attribution, selection, found, task=f"compositional-{part}",
                                examples=items[part].height, faithfulness=found.metrics)  # fmt: skip
        write_circuit(config.out / f"compositional-{part}", circuits[part], meta)
        if on_part is not None:
            on_part(part)
    return circuits


def merged_vs_own(
    config: CompositionalConfig, loaded: LoadedModel, items: dict[str, pl.DataFrame], circuits: dict
) -> tuple[pl.DataFrame, dict]:
    """Return the merged-vs-own faithfulness curve over ``config.budgets`` and their similarity."""
    discovery = config.discovery
    attribution = discovery.attribution_config()
    batches, _ = discovery_batches(loaded, items["full"], attribution, discovery.batch_size)
    probe = ModelProbe(loaded.model, loaded.architecture)
    subtasks, own = [circuits["inner"], circuits["outer"]], circuits["full"]
    curve = merged_budget_curve(probe, batches, subtasks, own, config.budgets, config.nodes, config.score,
                                discovery.metric)  # fmt: skip
    return curve, merged_similarity(subtasks, own, nodes=config.nodes, score=config.score)


def merged_budget_curve(
    probe: ModelProbe,
    batches: Sequence[PairBatch],
    subtasks: Sequence[pl.DataFrame],
    own: pl.DataFrame,
    budgets: Sequence[float],
    nodes: NodeRule = "union",
    score: ScoreRule = "mean",
    metric: Metric = "kl",
) -> pl.DataFrame:
    """Return per budget the faithfulness and circuit accuracy of the merged and the own circuit.

    At each budget (a share of edges) every subtask's circuit is first re-selected
    as its top edges, unpruned (so the candidates fill the budget), merged, and cut
    to the budget's edge count; the own circuit is the top edges of the task's own
    scores with dead nodes pruned, as discovery selects it.
    """
    graph = probe.graph
    device = batches[0].clean.input_ids.device
    own_scores, _ = circuit_mask(own, graph)
    sub_scores = [circuit_mask(sub, graph)[0] for sub in subtasks]
    rows = []
    for budget in budgets:
        count = edge_count(graph, budget)
        reselected = [edges_table(s, top_edges(s, graph, count), graph) for s in sub_scores]
        merged = merge_circuits(reselected, count, nodes=nodes, score=score)
        circuits = {
            f"merged ({nodes}, {score})": circuit_mask(merged, graph)[1],
            "own": select_circuit(own_scores, graph, "top", edges=count),
        }
        for label, mask in circuits.items():
            metrics = circuit_evaluation(probe, batches, mask.to(device), metric)
            rows.append({"budget": budget, "circuit": label, "edges": int(mask.sum()),
                         "faithfulness": metrics["faithfulness"],
                         "faithfulness_paper": metrics["faithfulness_paper"],
                         "circuit_accuracy": metrics["circuit_accuracy"]})  # fmt: skip
    return pl.DataFrame(rows)


def merged_similarity(subtasks: Sequence[pl.DataFrame], own: pl.DataFrame, **rules) -> dict:
    """Return node/edge Jaccard of the merged circuit (cut to the own circuit's edge count) vs the own one."""
    merged = merge_circuits(subtasks, int(own["in_circuit"].sum()), **rules)
    return circuit_similarity(own, merged)


def merged_subtask_circuit(config: CompositionalConfig) -> pl.DataFrame:
    """Return the merged circuit of the compositional task's subtasks on ``config.model`` at
    ``config.discovery.budget``: the subtasks' circuits (discovered, or read from
    ``<out>/compositional-<part>``) merged under the config's node and score rules, cut to the budget's
    edge count."""
    stems = {part: Path(config.out) / f"compositional-{part}" for part in SUBTASKS}
    if all(circuit_exists(stem) for stem in stems.values()):
        rebuild = "delete it and rerun python -m jobs.compositional (a missing part's circuit is discovered)"
        circuits = {part: read_circuit(stem, rebuild)[0] for part, stem in stems.items()}
    else:
        loaded = load_model(config.model)
        circuits = part_circuits(config, loaded, part_items(config, loaded, SUBTASKS))
    edges = max(1, round(config.discovery.budget * circuits["inner"].height))  # every graph edge is a row
    return merge_circuits(list(circuits.values()), edges, nodes=config.nodes, score=config.score)


@dataclass(frozen=True)
class CompositionalMerge:
    """The merged subtask circuits against the compositional task's own: the faithfulness curve of each
    over the budgets, their similarity, and the figure."""

    curve: pl.DataFrame = field(repr=False)  # circuit, budget, faithfulness
    similarity: dict
    figure: Path

    def describe(self) -> str:
        with pl.Config(tbl_rows=-1, tbl_width_chars=160, fmt_str_lengths=40):
            table = str(self.curve.pivot("circuit", index="budget", values="faithfulness"))
        return (f"{table}\nmerged vs own circuit: node Jaccard {self.similarity['node_jaccard']:.3f}, "
                f"edge Jaccard {self.similarity['edge_jaccard']:.3f}; figure: {self.figure}")  # fmt: skip


def compositional_merge(
    config: CompositionalConfig, on_part: Callable[[str], None] | None = None
) -> CompositionalMerge:
    """Discover the circuits of compositional-inner, -outer and -full on ``config.model`` (``on_part`` after
    each), merge the two subtask circuits, measure the merged and the own circuit's faithfulness on the
    compositional task at every budget; write the curve, similarity and figure to ``config.out`` and log
    them to MLflow (experiment ``compositional``)."""
    torch.set_num_threads(config.threads)
    loaded = load_model(config.model, device="cuda" if torch.cuda.is_available() else "cpu")
    items = part_items(config, loaded)
    circuits = part_circuits(config, loaded, items, on_part)
    curve, similarity = merged_vs_own(config, loaded, items, circuits)
    out = Path(config.out)
    with atomic_file(out / "merged_budget_curve.parquet") as tmp:
        curve.write_parquet(tmp)
    with atomic_file(out / "merged_similarity.json") as tmp:
        tmp.write_text(json.dumps(similarity, indent=1))
    figure = faithfulness_by_budget(curve, out / "merged_faithfulness.png",
                                    f"compositional task, model {Path(str(config.model)).name}")  # fmt: skip
    uri, run_id = create_run(out, "compositional", out.name, config.model_dump(mode="json"))
    logger = RunLogger(uri, run_id)
    for key in ("node_jaccard", "edge_jaccard"):
        logger.metric(f"merged_vs_own_{key}", similarity[key], step=0)
    logger.artifact(out / "merged_budget_curve.parquet")
    logger.artifact(figure)
    logger.finish()
    return CompositionalMerge(curve, similarity, figure)
