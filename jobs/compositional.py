"""Compositional task: merge its subtasks' circuits, compare with its own circuit over edge budgets.

    python -m jobs.compositional [--set model=runs/finetune-tiny/checkpoints/step-001000 --set out=...]

Discovers the circuits of compositional-inner, -outer and -full on one model,
merges the two subtask circuits (node union or intersection; shared-edge score
mean, max or min), and measures the merged and the own circuit's faithfulness on
the compositional task at every budget (the shape of the paper's table).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import torch
from tqdm import tqdm

from ftcircuits.circuits.attribution import AttributionConfig, ModelProbe
from ftcircuits.circuits.compositional import merged_budget_curve, merged_similarity
from ftcircuits.circuits.discover import Selection, circuit_metadata, discover_circuit, pair_batches
from ftcircuits.circuits.io import edges_table, write_circuit
from ftcircuits.config import CompositionalConfig, TaskSpec
from ftcircuits.models.loader import load_model
from ftcircuits.paths import atomic_file
from ftcircuits.report.circuit_figures import faithfulness_by_budget
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import MANIFEST_FILE, read_items
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run
from jobs.cli import config_parser, parse_config

PARTS = ("inner", "outer", "full")


def main(argv: list[str] | None = None) -> None:
    config = parse_config(CompositionalConfig, config_parser(__doc__.splitlines()[0]).parse_args(argv))
    torch.set_num_threads(config.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(config.model, device=device)
    items = {}
    for part in PARTS:
        spec = TaskSpec(name="compositional", part=part)
        directory = config.data / spec.dataset_name()
        if not (directory / MANIFEST_FILE).is_file():
            make_task_dataset(spec, loaded.tokenizer, config.model, config.data)
        split = read_items(directory, config.split)
        items[part] = split.head(config.examples) if config.examples else split

    attribution = AttributionConfig(config.method, config.steps, config.step_convention, config.metric)
    selection = Selection(config.selection, config.fraction)
    circuits = {}
    for part in tqdm(PARTS, desc="circuits (inner, outer, full)", unit="circuit"):
        found = discover_circuit(loaded, items[part], attribution, selection, config.batch_size)
        circuits[part] = edges_table(found.scores, found.circuit, found.graph)
        meta = circuit_metadata(loaded, attribution, selection, task=f"compositional-{part}",
                                examples=items[part].height, faithfulness=found.metrics)  # fmt: skip
        write_circuit(config.out / f"compositional-{part}", circuits[part], meta)

    batches = pair_batches(loaded.tokenizer, items["full"], config.batch_size, device)
    probe = ModelProbe(loaded.model, loaded.architecture)
    subtasks, own = [circuits["inner"], circuits["outer"]], circuits["full"]
    curve = merged_budget_curve(probe, batches, subtasks, own, config.budgets, config.nodes, config.score,
                                config.metric)  # fmt: skip
    similarity = merged_similarity(subtasks, own, nodes=config.nodes, score=config.score)
    with atomic_file(config.out / "merged_budget_curve.parquet") as tmp:
        curve.write_parquet(tmp)
    with atomic_file(config.out / "merged_similarity.json") as tmp:
        tmp.write_text(json.dumps(similarity, indent=1))
    figure = faithfulness_by_budget(curve, config.out / "merged_faithfulness.png",
                                    f"compositional task, model {Path(str(config.model)).name}")  # fmt: skip

    uri, run_id = create_run(config.out, "compositional", config.out.name, config.model_dump(mode="json"))
    logger = RunLogger(uri, run_id)
    for key in ("node_jaccard", "edge_jaccard"):
        logger.metric(f"merged_vs_own_{key}", similarity[key], step=0)
    logger.artifact(config.out / "merged_budget_curve.parquet")
    logger.artifact(figure)
    logger.finish()
    with pl.Config(tbl_rows=-1, tbl_width_chars=160, fmt_str_lengths=40):
        print(curve.pivot("circuit", index="fraction", values="faithfulness"))
    print(f"merged vs own circuit: node Jaccard {similarity['node_jaccard']:.3f}, "
          f"edge Jaccard {similarity['edge_jaccard']:.3f}; figure: {figure}")  # fmt: skip


if __name__ == "__main__":
    main()
