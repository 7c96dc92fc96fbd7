"""Compositional task: merge its subtasks' circuits, compare with its own circuit over edge budgets.

    python -m jobs.compositional [--set model=runs/finetune-tiny/checkpoints/step-001000 --set out=...]

Discovers the circuits of compositional-inner, -outer and -full on one model, merges the two subtask
circuits (node union or intersection; shared-edge score mean, max or min), and measures the merged and the
own circuit's faithfulness on the compositional task at every budget (the shape of the paper's table).
"""

from __future__ import annotations

from tqdm import tqdm

from ftcircuits.config.discovery import CompositionalConfig
from ftcircuits.study.compositional import PARTS, compositional_merge
from jobs.cli import config_parser, exit_on, parse_config


def main(argv: list[str] | None = None) -> None:
    config = parse_config(CompositionalConfig, config_parser(__doc__.splitlines()[0]).parse_args(argv))
    with exit_on(), tqdm(total=len(PARTS), desc="circuits (inner, outer, full)", unit="circuit") as bar:
        merged = compositional_merge(config, lambda part: bar.update())
    print(merged.describe())


if __name__ == "__main__":
    main()
