"""CircuitLoRA (the paper's Algorithm 1) end to end: reference run, circuits, plan, fine-tune.

The plan: the critical layers from the reference run's circuits, and ranks matched to LoRA's parameter count.

    python -m jobs.circuitlora --config jobs/configs/circuitlora-tiny.yaml [--set critical.k=2]

Each step is cached: the reference run and its checkpoints' circuits are reused when done; the plan is
written to ``<out>/circuitlora.json`` and logged to MLflow; the CircuitLoRA run goes to
``<out>/finetune-<hash>``.
"""

from __future__ import annotations

from ftcircuits.cluster.circuitlora import circuitlora
from ftcircuits.cluster.connection import ClusterError
from ftcircuits.config.circuitlora import CircuitLoraConfig
from ftcircuits.config.loading import ConfigError
from jobs.cli import config_parser, exit_on, parse_config


def main(argv: list[str] | None = None) -> None:
    config = parse_config(CircuitLoraConfig, config_parser(__doc__.splitlines()[0]).parse_args(argv))
    with exit_on(ConfigError, ClusterError, RuntimeError):
        print(circuitlora(config).describe(config.ranks.lora_r))


if __name__ == "__main__":
    main()
