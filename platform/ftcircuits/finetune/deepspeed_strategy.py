"""The DeepSpeed strategy: one object owns ``deepspeed.initialize``, the step and saving.

Runs inside a Ray Train worker (the process group already exists) or, for a
single process, after ``single_process_environment`` sets the rendezvous
variables DeepSpeed wants. Precision: fp32 on CPU; bf16 or fp16 on GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ftcircuits.encoding import LabelledBatch
from ftcircuits.finetune.loop import answer_loss, build_optimizer
from ftcircuits.finetune.methods import attach_rank_reallocation
from ftcircuits.finetune.schedule import TrainSettings, warmup_cosine
from ftcircuits.options import Precision, ZeroStage, check_choice

DS_ACCELERATOR_ENV = "DS_ACCELERATOR"  # DeepSpeed's own choice of accelerator, set to "cpu" without a GPU


def single_process_environment(port: int = 29500) -> None:
    """Set the rendezvous variables of a one-process group unless a launcher already did."""
    defaults = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                "LOCAL_RANK": "0"}  # fmt: skip
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def deepspeed_config(
    settings: TrainSettings, micro_batch_size: int, zero_stage: ZeroStage, precision: Precision
) -> dict:
    """Return the DeepSpeed config of a run (the optimiser and schedule are ours, passed as objects)."""
    check_choice(ZeroStage, zero_stage, "ZeRO stage")
    check_choice(Precision, precision, "precision")
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": settings.grad_accumulation,
        "gradient_clipping": settings.max_grad_norm,
        "zero_optimization": {"stage": zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


class DeepSpeedStrategy:
    """Trains ``model`` through a DeepSpeed engine; AdamW and warmup + cosine as the plain strategy."""

    def __init__(
        self,
        model: torch.nn.Module,
        settings: TrainSettings,
        micro_batch_size: int,
        zero_stage: int = 2,
        precision: Precision = "fp32",
        param_groups: list[dict] | None = None,
    ) -> None:
        if not torch.cuda.is_available():
            # say so: DeepSpeed otherwise probes for accelerators and warns, in every worker, "Setting
            # accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
            os.environ.setdefault(DS_ACCELERATOR_ENV, "cpu")
        import deepspeed

        if precision != "fp32" and not torch.cuda.is_available():
            raise ValueError(f"precision {precision!r} needs a GPU; use fp32 on CPU")
        optimizer = build_optimizer(model, settings, param_groups)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(settings)),
            config=deepspeed_config(settings, micro_batch_size, zero_stage, precision),
        )
        self.zero_stage = zero_stage
        if attach_rank_reallocation(model, optimizer, lambda: self.engine.global_steps + 1) and zero_stage:
            raise ValueError("AdaLoRA's rank reallocation needs ZeRO stage 0 (gradients on the parameters)")

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def micro_step(self, batch: LabelledBatch) -> float:
        loss = answer_loss(self.engine, batch.to(self.engine.device))
        self.engine.backward(loss)  # DeepSpeed scales by the accumulation steps itself
        self.engine.step()  # steps the optimiser and schedule at accumulation boundaries only
        return loss.item()

    ENGINE_STATE = "engine_state"

    def save_state(self, directory: Path) -> None:
        """Save the full training state (weights, optimiser, schedule, step): every rank joins."""
        self.engine.save_checkpoint(str(Path(directory) / self.ENGINE_STATE), tag="state")

    def load_state(self, directory: Path) -> int:
        """Restore the state saved by ``save_state``; return the optimiser steps already taken."""
        self.engine.load_checkpoint(str(Path(directory) / self.ENGINE_STATE), tag="state")
        return self.engine.global_steps

    def save_pretrained(self, directory: Path) -> None:
        """Save in Hugging Face format from rank 0; under ZeRO-3 the weights are gathered first."""
        state = self.engine._zero3_consolidated_16bit_state_dict() if self.zero_stage == 3 else None
        if self.engine.global_rank == 0:
            self.module.save_pretrained(directory, state_dict=state)
