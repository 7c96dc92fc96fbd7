"""Optimiser settings and the learning-rate schedule of a training run (plain Python: configs build them)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


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


def optimizer_steps(
    examples: int, epochs: int, micro_batch: int, workers: int, grad_accumulation: int
) -> int:
    """Return the optimiser steps of a run: each epoch's micro-batches, cut to a multiple of
    workers x accumulation so every rank steps alike, over ``epochs``."""
    per_epoch = math.ceil(examples / micro_batch)
    usable = per_epoch // (workers * grad_accumulation) * workers * grad_accumulation
    return epochs * usable // (workers * grad_accumulation)
