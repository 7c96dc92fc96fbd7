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
