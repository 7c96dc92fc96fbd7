"""Training throughput: the plain loop vs one Ray + DeepSpeed worker vs two, on the same data.

    python -m jobs.bench_finetune [--items 2000] [--micro-batch 16]

Tokens/s is measured inside the training loop (real prompt tokens, padding excluded); the
Ray runs' figure is the per-worker rate times the workers. Wall time adds start-up, data,
checkpoints at the first and last step, and evaluation.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from ftcircuits.cluster.train import connect, run_finetune
from ftcircuits.config.benchmarks import BenchFinetuneConfig
from ftcircuits.encoding import prompt_ids, require_answer_ids
from ftcircuits.finetune.loop import PlainStrategy, epoch_batches, train_answer_model
from ftcircuits.finetune.methods import apply_method
from ftcircuits.finetune.settings import FinetuneConfig, MethodConfig
from ftcircuits.models.loader import load_model, load_tokenizer
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import read_items
from ftcircuits.tasks.spec import TaskSpec
from ftcircuits.tracking.mlflow_runs import tracking_uri
from jobs.cli import config_parser, flag_overrides, parse_config


def plain_tokens_per_s(data_dir: Path, config: FinetuneConfig) -> tuple[float, float]:
    """Return (tokens/s, wall seconds) of the plain loop with the config's method and batches."""
    began = time.perf_counter()
    torch.set_num_threads(2)
    loaded = load_model(config.model)
    items = read_items(data_dir, "finetune")
    ids = prompt_ids(loaded.tokenizer, items["prompt"].to_list())
    answers = require_answer_ids(loaded.tokenizer, items["prompt"].to_list(), items["answer"].to_list())
    batches = list(
        epoch_batches(ids, answers, config.train.micro_batch_size, 1, loaded.tokenizer.pad_token_id)
    )
    settings = config.train.settings(len(batches))
    token_ids = loaded.tokenizer.convert_tokens_to_ids(config.method.trainable_tokens)
    model = apply_method(loaded.model, loaded.architecture, config.method, len(batches), token_ids)
    started = time.perf_counter()
    train_answer_model(PlainStrategy(model, settings), batches, settings)
    seconds = time.perf_counter() - started
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    return tokens / seconds, time.perf_counter() - began


def ray_tokens_per_s(data_dir: Path, config: FinetuneConfig, workers: int, out: Path) -> tuple[float, float]:
    """Return (tokens/s over all workers, wall seconds) of one Ray + DeepSpeed run."""
    scaling = config.scaling.model_copy(update={"workers": workers, "cpus_per_worker": 2 / workers})
    config = config.model_copy(update={"scaling": scaling, "out": out / f"workers-{workers}"})
    began = time.perf_counter()
    result, run_id = run_finetune(config, data_dir, max_failures=0)
    if result.error is not None:
        raise SystemExit(f"run with {workers} workers failed: {result.error}")
    wall = time.perf_counter() - began
    (rate,) = MlflowClient(tracking_uri(config.out)).get_metric_history(run_id, "worker_tokens_per_s")
    return rate.value * workers, wall


def main(argv: list[str] | None = None) -> None:
    parser = config_parser(__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, help="dataset size (80% is trained on, one epoch)")
    parser.add_argument("--micro-batch", type=int)
    args = parser.parse_args(argv)
    args = parse_config(BenchFinetuneConfig, args, flag_overrides(args, ("items", "micro_batch")))
    out = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    method = MethodConfig(name="lora", r=8, trainable_tokens=["+", "-", "*", "/", "="])
    config = FinetuneConfig.model_validate({
        "model": "tiny", "method": method.model_dump(), "out": str(out),
        "task": TaskSpec(name="addsub", range=100, size=args.items).model_dump(exclude_none=True),
        "train": {"epochs": 1, "micro_batch_size": args.micro_batch, "grad_accumulation": 1,
                  "warmup_steps": 10, "lr": 5e-3, "checkpoint_every": 10**6},
    })  # fmt: skip
    data_dir, _ = make_task_dataset(config.task, load_tokenizer("tiny"), "tiny", out / "data")
    plain, plain_wall = plain_tokens_per_s(data_dir, config)
    connect(num_cpus=2)
    one, one_wall = ray_tokens_per_s(data_dir, config, 1, out)
    two, two_wall = ray_tokens_per_s(data_dir, config, 2, out)
    print(f"tiny LoRA, {int(0.8 * args.items)} items x 1 epoch, micro-batch {args.micro_batch}, 2 CPU cores")
    print(f"plain loop:             {plain:8.0f} tokens/s  (wall {plain_wall:5.1f}s)")
    print(f"Ray + DeepSpeed, 1 wkr: {one:8.0f} tokens/s  (wall {one_wall:5.1f}s)  vs plain {one / plain:.2f}")
    print(
        f"Ray + DeepSpeed, 2 wkr: {two:8.0f} tokens/s  (wall {two_wall:5.1f}s)  vs 1 worker {two / one:.2f}"
    )


if __name__ == "__main__":
    main()
