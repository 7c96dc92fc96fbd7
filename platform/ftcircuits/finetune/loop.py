"""The training loop as a plain PyTorch function (no Ray, CPU or one GPU).

The loss is cross-entropy on the answer token at the prompt's last position:
prompt and padding tokens carry no loss, and the format is the probe's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ftcircuits.finetune.encoding import IGNORE_INDEX, LabelledBatch, answer_batch, model_logits, pad_prompts


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and schedule of one training run."""

    total_steps: int
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_accumulation: int = 1
    max_grad_norm: float = 1.0
    min_lr_ratio: float = 0.1


def answer_loss(model: torch.nn.Module, batch: LabelledBatch) -> torch.Tensor:
    """Return the mean cross-entropy over labelled positions only (prompt and padding carry none)."""
    logits = model_logits(model, batch)
    keep = batch.labels != IGNORE_INDEX
    return F.cross_entropy(logits[keep].float(), batch.labels[keep])


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into decayed matrices and undecayed rest.

    Embeddings, biases and norms are not decayed, so a token the corpus never
    shows keeps its initial vector instead of shrinking to zero.
    """
    decayed, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "embed" in name or "norm" in name
        (plain if no_decay else decayed).append(param)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def warmup_cosine(settings: TrainSettings) -> Callable[[int], float]:
    """Return the learning-rate multiplier per optimiser step: linear warmup, cosine decay."""

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        span = max(1, settings.total_steps - settings.warmup_steps)
        progress = min(1.0, (step - settings.warmup_steps) / span)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cosine

    return factor


def epoch_batches(
    prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[int],
    batch_size: int,
    epochs: int,
    pad_id: int,
    seed: int = 0,
) -> Iterator[LabelledBatch]:
    """Yield shuffled, padded, answer-labelled batches over ``epochs`` passes of the examples."""
    rng = random.Random(seed)
    order = list(range(len(prompt_ids)))
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = pad_prompts([prompt_ids[i] for i in chosen], pad_id)
            yield answer_batch(batch, torch.tensor([answer_ids[i] for i in chosen], dtype=torch.long))


def train_answer_model(
    model: torch.nn.Module,
    batches: Iterable[LabelledBatch],
    settings: TrainSettings,
    on_step: Callable[[int, float], None] | None = None,
    param_groups: list[dict] | None = None,
) -> list[float]:
    """Train ``model`` on answer-token loss for ``settings.total_steps`` optimiser steps.

    ``batches`` must yield at least ``total_steps * grad_accumulation`` batches.
    ``param_groups`` overrides the default decay groups (per-group learning rates
    are scaled by the same schedule). Returns the loss of each optimiser step.
    """
    device = next(model.parameters()).device
    groups = param_groups or decay_groups(model, settings.weight_decay)
    for group in groups:
        group.setdefault("lr", settings.lr)
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(settings))
    model.train()
    losses: list[float] = []
    stream = iter(batches)
    for step in range(settings.total_steps):
        total = 0.0
        for _ in range(settings.grad_accumulation):
            try:
                batch = next(stream)
            except StopIteration:
                raise ValueError(f"batches ran out at step {step} of {settings.total_steps}") from None
            loss = answer_loss(model, batch.to(device)) / settings.grad_accumulation
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
        if on_step is not None:
            on_step(step, total)
    model.eval()
    return losses
