"""The fine-tuning engine's settings: the method (over PEFT), optimisation, DeepSpeed, scaling, and one
run's config (``FinetuneConfig``, also ``jobs.finetune``'s schema)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from ftcircuits.finetune.schedule import TrainSettings
from ftcircuits.models.source import ModelSource
from ftcircuits.options import FinetuneMethod, Precision, ZeroStage
from ftcircuits.schema import Strict
from ftcircuits.tasks.spec import TaskSpec


def _train_settings(config: PlainFinetuneConfig | TrainConfig, total_steps: int) -> TrainSettings:
    return TrainSettings(
        total_steps=total_steps, lr=config.lr, weight_decay=config.weight_decay,
        warmup_steps=min(config.warmup_steps, total_steps), grad_accumulation=config.grad_accumulation,
    )  # fmt: skip


class MethodConfig(Strict):
    """One fine-tuning method and its hyper-parameters (``finetune.methods.apply_method`` reads it)."""

    name: FinetuneMethod = "lora"
    r: int = Field(8, ge=1, description="LoRA rank (AdaLoRA: target rank)")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha; default 2r as in the paper")
    dropout: float = Field(0.0, ge=0, lt=1)
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="regex -> rank (CircuitLoRA)")
    alpha_pattern: dict[str, int] = Field(default_factory=dict, description="regex -> alpha (CircuitLoRA)")
    adalora_init_r: int = Field(12, ge=1)
    adalora_tinit: int = Field(25, ge=0)
    adalora_tfinal: int = Field(50, ge=0)
    adalora_delta_t: int = Field(10, ge=1)
    trainable_tokens: list[str] = Field(
        default_factory=list,
        description="tokens whose input embeddings also train (e.g. a notation the base model never saw)",
    )


class PlainFinetuneConfig(Strict):
    """A plain-PyTorch full fine-tune (no Ray), answer-token loss."""

    lr: float = Field(5e-4, gt=0)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 42

    def settings(self, total_steps: int) -> TrainSettings:
        """Return the loop's settings for a run of ``total_steps`` optimiser steps."""
        return _train_settings(self, total_steps)


class TrainConfig(Strict):
    """Optimisation of a fine-tuning run (paper appendix: batch 8 x accumulation 4, warmup 50)."""

    lr: float = Field(3e-4, gt=0)
    epochs: int = Field(2, ge=1)
    micro_batch_size: int = Field(8, ge=1, description="per worker")
    grad_accumulation: int = Field(4, ge=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 42
    checkpoint_every: int = Field(25, ge=1, description="optimiser steps between checkpoints")
    lr_groups: dict[str, float] = Field(
        default_factory=dict,
        description="regex over parameter names -> learning rate (first match wins), e.g. CircuitLoRA's "
        "critical layers; other parameters take lr",
    )

    @field_validator("lr_groups")
    @classmethod
    def _lr_groups_are_valid(cls, groups: dict[str, float]) -> dict[str, float]:
        for pattern, lr in groups.items():
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"lr_groups pattern {pattern!r} is not a regular expression: {error}"
                ) from None
            if lr <= 0:
                raise ValueError(f"lr_groups[{pattern!r}] must be > 0, got {lr}")
        return groups

    def settings(self, total_steps: int) -> TrainSettings:
        """Return the loop's settings for a run of ``total_steps`` optimiser steps."""
        return _train_settings(self, total_steps)


class DeepSpeedSettings(Strict):
    zero_stage: ZeroStage = 2
    precision: Precision = "fp32"


class ScalingSettings(Strict):
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)


class FinetuneConfig(Strict):
    """``jobs.finetune``: one fine-tuning run on Ray Train with DeepSpeed."""

    model: ModelSource = "tiny"
    task: TaskSpec = TaskSpec(name="addsub", range=100)
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()
    scaling: ScalingSettings = ScalingSettings()
    eval_batch_size: int = Field(256, ge=1)
    out: Path = Path("runs/finetune")

    @model_validator(mode="after")
    def _adalora_needs_zero_stage_0(self) -> FinetuneConfig:
        if self.method.name == "adalora" and self.deepspeed.zero_stage != 0:
            raise ValueError(
                f"method.name 'adalora' needs deepspeed.zero_stage=0, not {self.deepspeed.zero_stage}: its "
                "rank reallocation reads the gradients on the parameters, which ZeRO 1-3 partition away"
            )
        return self

    @model_validator(mode="after")
    def _precision_fits_device(self) -> FinetuneConfig:
        if self.deepspeed.precision != "fp32" and not self.scaling.use_gpu:
            raise ValueError(f"deepspeed.precision {self.deepspeed.precision!r} needs scaling.use_gpu=true")
        return self
