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

from ftcircuits.config.discovery import CompositionalConfig
from ftcircuits.models.loader import load_model
from ftcircuits.paths import atomic_file
from ftcircuits.report.circuit_figures import faithfulness_by_budget
from ftcircuits.study.compositional import PARTS, merged_vs_own, part_circuits, part_items
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run
from jobs.cli import config_parser, parse_config


def main(argv: list[str] | None = None) -> None:
    config = parse_config(CompositionalConfig, config_parser(__doc__.splitlines()[0]).parse_args(argv))
    torch.set_num_threads(config.threads)
    loaded = load_model(config.model, device="cuda" if torch.cuda.is_available() else "cpu")
    items = part_items(config, loaded)
    bar = tqdm(total=len(PARTS), desc="circuits (inner, outer, full)", unit="circuit")
    circuits = part_circuits(config, loaded, items, lambda part: bar.update())
    bar.close()
    curve, similarity = merged_vs_own(config, loaded, items, circuits)
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
        print(curve.pivot("circuit", index="budget", values="faithfulness"))
    print(f"merged vs own circuit: node Jaccard {similarity['node_jaccard']:.3f}, "
          f"edge Jaccard {similarity['edge_jaccard']:.3f}; figure: {figure}")  # fmt: skip


if __name__ == "__main__":
    main()
