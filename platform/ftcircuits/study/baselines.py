"""The briefly-trained baseline: a random init of the base's architecture, pre-trained for a few steps.

Random weights (even at the pre-trained scale) barely depend on the input or depend on it in no
structured way; a model of the same shape trained briefly on the tiny pre-training corpus has started to
form input-dependent structure without the base's full training, so it asks whether robustness comes
from pre-training itself. It is built once on the driver and cached as a model directory, which circuit
units then load like a full-weights checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ftcircuits.config.benchmarks import PretrainConfig
from ftcircuits.finetune.loop import PlainStrategy, train_answer_model
from ftcircuits.finetune.schedule import TrainSettings
from ftcircuits.models.loader import load_model
from ftcircuits.models.tiny_corpus import CorpusMix, packed_batches
from ftcircuits.paths import atomic_directory


def briefly_trained_dir(root: Path, steps: int, seed: int) -> Path:
    """Return where the briefly-trained baseline of ``steps`` and ``seed`` is cached under ``root``."""
    return Path(root) / f"briefly-trained-{steps}steps-seed{seed}"


def briefly_trained_baseline(
    base_model: str, root: Path, steps: int, seed: int, on_step: Callable[[int, float], None] | None = None
) -> Path:
    """Return the model directory of the base's architecture from a random init (``seed``) after ``steps``
    optimiser steps on the tiny pre-training corpus (the shipped recipe's batch, length and learning rate,
    warm-up a tenth of the steps); trained and written atomically when not cached."""
    out = briefly_trained_dir(root, steps, seed)
    if (out / "config.json").is_file():
        return out
    loaded = load_model(base_model)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(loaded.model.config)
    recipe = PretrainConfig()
    settings = TrainSettings(
        total_steps=steps, lr=recipe.lr, warmup_steps=max(1, steps // 10), weight_decay=0.05
    )
    batches = packed_batches(loaded.tokenizer, CorpusMix(), recipe.batch_size, recipe.seq_len, seed)
    train_answer_model(PlainStrategy(model, settings), batches, settings, on_step)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
    return out
