"""CircuitLoRA sweep on Ray Tune: Optuna search, ASHA stopping on each checkpoint's held-out accuracy.

    python -m tuning.sweep --config tuning/configs/circuitlora-tiny.yaml [--set trials=4]

The reference run and its circuits are computed once (or reused); each trial plans its own CircuitLoRA
and fits a TorchTrainer; an interrupted sweep is restored. Outputs in ``out``: ``trials.parquet``,
``best.yaml`` (a config ``jobs.finetune`` runs as it is) and MLflow (a parent run, a child per trial).
"""

from __future__ import annotations

from collections.abc import Sequence

from ray import tune

from ftcircuits.cluster.connection import ClusterError
from ftcircuits.cluster.sweep import sweep
from ftcircuits.config.loading import ConfigError
from ftcircuits.config.sweep import SweepConfig
from jobs.cli import config_parser, exit_on, parse_config


def main(argv: list[str] | None = None, callbacks: Sequence[tune.Callback] = ()) -> None:
    """Run (or resume) the sweep; ``callbacks`` join the MLflow one in the Tune driver."""
    config = parse_config(SweepConfig, config_parser(__doc__.splitlines()[0]).parse_args(argv))
    with exit_on(ConfigError, ClusterError):
        print(sweep(config, callbacks).describe())


if __name__ == "__main__":
    main()
