"""CircuitLoRA sweep on Ray Tune: Optuna search, ASHA stopping on each checkpoint's held-out accuracy.

    python -m tuning.sweep --config tuning/configs/circuitlora-tiny.yaml [--set trials=4]

The reference run and its circuits are computed once (or reused); each trial plans its own CircuitLoRA
and fits a TorchTrainer; an interrupted sweep is restored. Outputs in ``out``: ``trials.parquet``,
``best.yaml`` (a config ``jobs.finetune`` runs as it is) and MLflow (a parent run, a child per trial).
The command line is the jobs' (``--config FILE``, repeated ``--set key.path=value``); the sweep is the
top layer, so it reads it itself rather than through ``jobs``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ray import tune

from ftcircuits.cluster.connection import ClusterError
from ftcircuits.cluster.sweep import sweep
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.config.sweep import SweepConfig
from jobs.cli import exit_on


def main(argv: list[str] | None = None, callbacks: Sequence[tune.Callback] = ()) -> None:
    """Run (or resume) the sweep; ``callbacks`` join the MLflow one in the Tune driver."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML config file (defaults if omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set trials=4 (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        config = load_config(SweepConfig, args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    with exit_on(ConfigError, ClusterError):  # a damaged input file, an unreachable cluster: exit 2
        print(sweep(config, callbacks).describe())


if __name__ == "__main__":
    main()
