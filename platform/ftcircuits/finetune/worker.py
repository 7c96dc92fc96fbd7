"""One fine-tuning run as a plain function per worker: Ray Train runs it, so can one process.

Checkpoints: step 0 (the base) and every ``checkpoint_every`` optimiser steps,
in Hugging Face format (full weights, or the adapter) with the tokenizer, under
``<out>/checkpoints/step-NNNNNN``; each is followed by the held-out (circuit
split) accuracy, and rank 0 keeps ``<out>/checkpoints/index.parquet``. The
newest checkpoint also holds the DeepSpeed training state a restart resumes from.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
import torch

from ftcircuits.encoding import accuracy, prompt_ids, require_answer_ids
from ftcircuits.finetune.deepspeed_strategy import DeepSpeedStrategy
from ftcircuits.finetune.loop import decay_groups, epoch_batches, train_answer_model
from ftcircuits.finetune.methods import apply_method, trainable_parameters
from ftcircuits.finetune.schedule import optimizer_steps
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.models.loader import load_model
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import CHECKPOINTS_DIR, checkpoint_path, index_path, read_checkpoint_index
from ftcircuits.tasks.io import read_items
from ftcircuits.tracking.mlflow_runs import RunLogger


def resumable_checkpoint(out: Path) -> Path | None:
    """Return the newest checkpoint ``out``'s index lists, which holds the training state a restart
    resumes from (written before the index names it, deleted from older ones only after); None before
    the first. It is never older than the newest checkpoint Ray Train registered, which can lag it by
    several when the driver is stopped."""
    if not index_path(out).is_file():
        return None
    newest = Path(read_checkpoint_index(out)["path"][-1])
    return newest if (newest / DeepSpeedStrategy.ENGINE_STATE).is_dir() else None


@dataclass(frozen=True)
class WorkerContext:
    """Where this worker sits, how it reports (metrics, checkpoint directory or None; every step's loss
    to ``progress``), and the MLflow run rank 0 logs into ((tracking uri, run id), or None)."""

    rank: int = 0
    world: int = 1
    report: Callable[[dict, Path | None], None] = lambda metrics, path: None
    progress: Callable[[int, float], None] = lambda step, loss: None
    mlflow_run: tuple[str, str] | None = None
    resume_from: Path | None = None  # a checkpoint directory of this run, after a failure or a stop


def sharded_batches(
    ids, answers, config: FinetuneConfig, pad_id: int, context: WorkerContext
) -> tuple[list, int]:
    """Return this worker's micro-batches and the optimiser steps they make (equal on every rank)."""
    train = config.train
    per_epoch = math.ceil(len(ids) / train.micro_batch_size)
    usable = per_epoch // (context.world * train.grad_accumulation) * context.world * train.grad_accumulation
    if usable == 0:
        raise ValueError(
            f"{len(ids)} examples are too few for {context.world} workers x micro-batch "
            f"{train.micro_batch_size} x accumulation {train.grad_accumulation}"
        )
    mine = []
    for epoch in range(train.epochs):
        epoch_list = list(epoch_batches(ids, answers, train.micro_batch_size, 1, pad_id, train.seed + epoch))
        mine += epoch_list[:usable][context.rank :: context.world]
    # the same count as the driver's (run_identity.run_steps)
    steps = optimizer_steps(
        len(ids), train.epochs, train.micro_batch_size, context.world, train.grad_accumulation
    )
    return mine, steps


def finetune_worker(config: FinetuneConfig, data_dir: Path, context: WorkerContext = WorkerContext()) -> None:
    """Fine-tune ``config.model`` on the dataset's fine-tune split under DeepSpeed."""
    torch.manual_seed(config.train.seed)
    loaded = load_model(config.model)
    tokenizer = loaded.tokenizer
    train_items, held_out = read_items(data_dir, "finetune"), read_items(data_dir, "circuit")
    ids = prompt_ids(tokenizer, train_items["prompt"].to_list())
    answers = require_answer_ids(tokenizer, train_items["prompt"].to_list(), train_items["answer"].to_list())
    batches, total_steps = sharded_batches(ids, answers, config, tokenizer.pad_token_id, context)
    token_ids = tokenizer.convert_tokens_to_ids(config.method.trainable_tokens)
    if tokenizer.unk_token_id in token_ids:
        raise ValueError(
            f"trainable_tokens {config.method.trainable_tokens} include tokens the tokenizer lacks"
        )
    train = config.train
    settings = train.settings(total_steps)
    model_params = sum(p.numel() for p in loaded.model.parameters())
    model = apply_method(loaded.model, loaded.architecture, config.method, total_steps, token_ids)
    # per index row: what every result table states (trainable parameters, their share, the run's length)
    size = {"trainable_params": trainable_parameters(model), "model_params": model_params,
            "total_steps": total_steps}  # fmt: skip
    strategy = DeepSpeedStrategy(
        model,
        settings,
        config.train.micro_batch_size,
        config.deepspeed.zero_stage,
        config.deepspeed.precision,
        decay_groups(model, config.train.weight_decay, config.train.lr_groups),
    )
    first_step = 0
    latest = {"eval_accuracy": float("nan")}  # the newest checkpoint's, for the final report
    rows: list[dict] = []
    if context.resume_from is not None:
        first_step = strategy.load_state(context.resume_from)
        rows = read_checkpoint_index(config.out).filter(pl.col("step") <= first_step).to_dicts()
        latest["eval_accuracy"] = rows[-1]["eval_accuracy"] if rows else float("nan")
    logger = RunLogger(*context.mlflow_run) if context.mlflow_run and context.rank == 0 else None
    if logger is not None:
        logger.param("trainable_params", size["trainable_params"])

    def checkpoint(step: int, loss: float) -> None:
        path = checkpoint_path(config.out, step)
        strategy.save_pretrained(path)  # every rank joins: ZeRO-3 gathers the weights
        strategy.save_state(path)
        prompts, targets = held_out["prompt"].to_list(), held_out["answer"].to_list()
        held = accuracy(strategy.module, tokenizer, prompts, targets, config.eval_batch_size)
        strategy.module.train()
        if context.rank == 0:
            tokenizer.save_pretrained(path)
            older = [Path(row["path"]) for row in rows]
            rows.append({"step": step, "path": str(path), "train_loss": loss, "eval_accuracy": held} | size)
            with atomic_file(index_path(config.out)) as tmp:
                pl.DataFrame(rows).write_parquet(tmp)
            for directory in older:  # resuming needs only the newest training state: the index's last
                shutil.rmtree(directory / DeepSpeedStrategy.ENGINE_STATE, ignore_errors=True)
            if logger is not None:
                logger.metric("eval_accuracy", held, step)
        latest["eval_accuracy"] = held
        context.report({"step": step, "train_loss": loss, "eval_accuracy": held}, path)

    def on_step(step: int, loss: float) -> None:
        done = first_step + step + 1
        context.progress(done, loss)
        if logger is not None:
            logger.metric("train_loss", loss, done)
        if done % config.train.checkpoint_every == 0 or done == total_steps:
            checkpoint(done, loss)

    if context.resume_from is None:
        checkpoint(0, float("nan"))
    remaining = batches[first_step * train.grad_accumulation :]  # the batch order is deterministic
    started = time.perf_counter()
    train_answer_model(strategy, remaining, replace(settings, total_steps=total_steps - first_step), on_step)
    seconds = time.perf_counter() - started  # includes the checkpoints taken during training
    tokens = sum(int(batch.attention_mask.sum()) for batch in remaining)
    final = {"step": total_steps, "worker_tokens_per_s": tokens / seconds, "train_seconds": seconds}
    context.report(final | latest, None)  # train_seconds marks a run that trained to its end
    if logger is not None:
        logger.metric("worker_tokens_per_s", tokens / seconds, total_steps)
    if logger is not None:
        logger.artifact(index_path(config.out), CHECKPOINTS_DIR)
