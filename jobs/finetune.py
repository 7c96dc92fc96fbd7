"""Fine-tune on Ray Train with DeepSpeed; checkpoints every N steps with held-out accuracy.

    python -m jobs.finetune --config jobs/configs/finetune-tiny.yaml [--set method.name=ia3]

The same command runs under ``ray job submit --working-dir . -- python -m jobs.finetune ...``.
"""

from __future__ import annotations

from ftcircuits.cluster.train import connect, run_finetune
from ftcircuits.config.data import PERTURB_RATIOS
from ftcircuits.config.training import FinetuneConfig
from ftcircuits.finetune.run_identity import check_run_directory, run_record
from ftcircuits.models.loader import load_tokenizer
from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import MANIFEST_FILE
from ftcircuits.tracking.mlflow_runs import tracking_uri
from jobs.cli import config_parser, parse_config


def main(argv: list[str] | None = None) -> None:
    args = config_parser(__doc__.splitlines()[0]).parse_args(argv)
    config = parse_config(FinetuneConfig, args)
    data_dir = config.out / "data" / config.task.dataset_name()
    check_run_directory(run_record(config, data_dir))  # before any work: another config is refused
    if not (data_dir / MANIFEST_FILE).is_file():
        tokenizer = load_tokenizer(config.model)
        make_task_dataset(config.task, tokenizer, config.model, config.out / "data", PERTURB_RATIOS)
    connect()
    result, run_id = run_finetune(config, data_dir)
    if result.error is not None:
        raise SystemExit(f"fine-tuning failed: {result.error}")
    index = read_checkpoint_index(config.out)
    print(index.select("step", "train_loss", "eval_accuracy"))
    print(f"checkpoints: {config.out / 'checkpoints'}; MLflow run {run_id} in {tracking_uri(config.out)}")


if __name__ == "__main__":
    main()
