"""The training loop as a plain PyTorch function (no Ray, CPU or one GPU).

The loss is cross-entropy on the answer token at the prompt's last position:
prompt and padding tokens carry no loss, and the format is the one accuracy reads (``encoding``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from ftcircuits.encoding import IGNORE_INDEX, LabelledBatch, answer_batch, model_logits, pad_prompts
from ftcircuits.finetune.methods import attach_rank_reallocation
from ftcircuits.finetune.schedule import TrainSettings, warmup_cosine


def answer_loss(model: torch.nn.Module, batch: LabelledBatch) -> torch.Tensor:
    """Return the mean cross-entropy over labelled positions only (prompt and padding carry none)."""
    logits = model_logits(model, batch)
    keep = batch.labels != IGNORE_INDEX
    return F.cross_entropy(logits[keep].float(), batch.labels[keep])


def _group_order(item: tuple[tuple[bool, int | None], list]) -> tuple[bool, int]:
    (decayed, index), _ = item
    return (not decayed, -1 if index is None else index)


def decay_groups(
    model: torch.nn.Module, weight_decay: float, lr_groups: Mapping[str, float] | None = None
) -> list[dict]:
    """Split trainable parameters into decayed matrices and undecayed rest, and by learning rate.

    Embeddings, biases and norms are not decayed, so a token the corpus never
    shows keeps its initial vector instead of shrinking to zero. ``lr_groups``
    maps a regular expression over parameter names to a learning rate (the
    first that matches wins; CircuitLoRA's critical layers); a group without
    ``lr`` takes the run's.
    """
    patterns = [(re.compile(pattern), lr) for pattern, lr in (lr_groups or {}).items()]
    groups: dict[tuple[bool, float | None], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "embed" in name or "norm" in name
        index = next((i for i, (pattern, _) in enumerate(patterns) if pattern.search(name)), None)
        groups.setdefault((not no_decay, index), []).append(param)
    unused = set(range(len(patterns))) - {index for _, index in groups}
    if unused:
        names = [patterns[i][0].pattern for i in sorted(unused)]
        raise ValueError(f"lr_groups patterns {names} match no trainable parameter")
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        | ({"lr": patterns[index][1]} if index is not None else {})
        for (decayed, index), params in sorted(groups.items(), key=_group_order)
    ]


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


class TrainingStrategy(Protocol):
    """Owns the optimiser step of one training run (plain PyTorch, or DeepSpeed)."""

    def micro_step(self, batch: LabelledBatch) -> float:
        """Run forward and backward on one micro-batch (stepping at accumulation boundaries)."""
        ...

    def save_pretrained(self, directory: Path) -> None:
        """Save the model (or its adapter) in Hugging Face format."""
        ...

    @property
    def module(self) -> torch.nn.Module:
        """The model being trained."""
        ...


class PlainStrategy:
    """AdamW with warmup + cosine, gradient accumulation and clipping, in plain PyTorch."""

    def __init__(
        self, model: torch.nn.Module, settings: TrainSettings, param_groups: list[dict] | None = None
    ) -> None:
        self.model, self.settings = model, settings
        self.device = next(model.parameters()).device
        self.optimizer = build_optimizer(model, settings, param_groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(settings))
        self.micro_steps = 0
        attach_rank_reallocation(
            model, self.optimizer, lambda: self.micro_steps // settings.grad_accumulation
        )

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def micro_step(self, batch: LabelledBatch) -> float:
        loss = answer_loss(self.model, batch.to(self.device))
        (loss / self.settings.grad_accumulation).backward()
        self.micro_steps += 1
        if self.micro_steps % self.settings.grad_accumulation == 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def save_pretrained(self, directory: Path) -> None:
        self.model.save_pretrained(directory)


def build_optimizer(
    model: torch.nn.Module, settings: TrainSettings, param_groups: list[dict] | None = None
) -> torch.optim.Optimizer:
    """Return AdamW over ``param_groups`` (default: decay groups); a group may carry its own lr."""
    groups = param_groups or decay_groups(model, settings.weight_decay)
    for group in groups:
        group.setdefault("lr", settings.lr)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.98))


def train_answer_model(
    strategy: TrainingStrategy,
    batches: Iterable[LabelledBatch],
    settings: TrainSettings,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train on answer-token loss for ``settings.total_steps`` optimiser steps; return each step's loss.

    ``batches`` must yield at least ``total_steps * grad_accumulation`` micro-batches.
    """
    strategy.module.train()
    losses: list[float] = []
    stream = iter(batches)
    for step in range(settings.total_steps):
        total = 0.0
        for _ in range(settings.grad_accumulation):
            try:
                batch = next(stream)
            except StopIteration:
                raise ValueError(f"batches ran out at step {step} of {settings.total_steps}") from None
            total += strategy.micro_step(batch) / settings.grad_accumulation
        losses.append(total)
        if on_step is not None:
            on_step(step, total)
    strategy.module.eval()
    return losses
