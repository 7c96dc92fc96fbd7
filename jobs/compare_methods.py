"""Compare fine-tuning methods (LoRA, CircuitLoRA, AdaLoRA, IA3, FPFT) over tasks and seeds, on Ray Tune.

    python -m jobs.compare_methods --config jobs/configs/compare-tiny.yaml [--set seeds=[0]]

Every (task, method, seed) is one Ray Train run, fitted as a Tune trial; finished runs are reused, so a
rerun resumes. CircuitLoRA methods are planned on each task's reference run. Outputs in ``out``:
``comparison.parquet``, ``comparison.md`` (mean ± std per task and method), ``comparison.png``, and
MLflow: a parent run per task, a child run per (method, seed).
"""

from __future__ import annotations

from ftcircuits.cluster.comparison import compare_methods
from ftcircuits.cluster.connection import ClusterError
from ftcircuits.config.comparison import CompareConfig
from ftcircuits.config.loading import ConfigError
from jobs.cli import config_parser, exit_on, exit_on_interrupt, parse_config


def main(argv: list[str] | None = None) -> None:
    config = parse_config(CompareConfig, config_parser(__doc__.splitlines()[0]).parse_args(argv))
    with exit_on_interrupt(), exit_on(ConfigError, ClusterError, RuntimeError):
        print(compare_methods(config).describe())


if __name__ == "__main__":
    main()
