"""A plain-PyTorch full fine-tune on a task's fine-tune split (no Ray, no DeepSpeed)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from ftcircuits.encoding import prompt_ids, require_answer_ids
from ftcircuits.finetune.loop import PlainStrategy, epoch_batches, train_answer_model
from ftcircuits.finetune.settings import PlainFinetuneConfig


def optimiser_steps(examples: int, config: PlainFinetuneConfig) -> int:
    """Return the optimiser steps a plain fine-tune of ``examples`` examples takes under ``config``."""
    return (config.epochs * math.ceil(examples / config.batch_size)) // config.grad_accumulation


def plain_finetune(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    config: PlainFinetuneConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Fine-tune every parameter on (prompt, answer) pairs; return the loss per optimiser step."""
    answer_ids = require_answer_ids(tokenizer, prompts, answers)
    ids = prompt_ids(tokenizer, prompts)
    total_steps = optimiser_steps(len(ids), config)
    if total_steps < 1:
        raise ValueError(f"{len(ids)} examples give no optimiser step at this batch size and accumulation")
    settings = config.settings(total_steps)
    torch.manual_seed(config.seed)
    batches = epoch_batches(
        ids, answer_ids, config.batch_size, config.epochs, tokenizer.pad_token_id, config.seed
    )
    return train_answer_model(PlainStrategy(model, settings), batches, settings, on_step)
