"""Fine-tune on Ray Train with DeepSpeed; checkpoints every N steps with held-out accuracy.

    python -m jobs.finetune --config jobs/configs/finetune-tiny.yaml [--set method.name=ia3]

The same command runs under ``ray job submit --working-dir . -- python -m jobs.finetune ...``.
"""

from __future__ import annotations

from ftcircuits.cluster.train import finetune
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.run_layout import CHECKPOINTS_DIR, read_checkpoint_index
from ftcircuits.tracking.mlflow_runs import tracking_uri
from jobs.cli import config_parser, exit_on, exit_on_interrupt, parse_config


def main(argv: list[str] | None = None) -> None:
    args = config_parser(__doc__.splitlines()[0]).parse_args(argv)
    config = parse_config(FinetuneConfig, args)
    with exit_on_interrupt(), exit_on(RuntimeError, ValueError):  # a damaged file of the run: exit 2
        run_id = finetune(config)
        index = read_checkpoint_index(config.out)
    print(index.select("step", "train_loss", "eval_accuracy"))
    print(f"checkpoints: {config.out / CHECKPOINTS_DIR}; MLflow run {run_id} in {tracking_uri(config.out)}")


if __name__ == "__main__":
    main()
