"""Memory per GPU of a fine-tuning preset, without a model download: its fine-tuning per DeepSpeed rank from
DeepSpeed's own estimators, and one circuit actor from ``circuits/memory.py``.

Fine-tuning memory per GPU is model states + frozen weights + activations:
- model states: DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs`` (what its ``*_all_cold``
  functions print), without offload. The estimator takes every parameter as trainable (16-bit
  weights and gradients, fp32 master weights and Adam states), so for PEFT it runs over the
  trainable parameters only, and the frozen weights are counted apart at their own precision
  (2 bytes in bf16/fp16): whole on every GPU under ZeRO 0-2, partitioned under ZeRO-3;
- activations: ``layers * s * b * h * (34 + 5 a s / h)`` bytes in 16-bit (Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", no recomputation), plus the
  logits ``s * b * vocab`` in 16-bit and in fp32 for the loss.

Circuits (``jobs.circuits --run`` at ``CircuitRunSettings``' defaults): one actor holds the whole model on
one GPU, in the preset's precision, plus one circuit batch: ``circuit_memory(...).peak`` (attribution or
evaluation, whichever is larger) at the default batch and the plan's sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from ftcircuits.circuits.memory import CircuitMemory, circuit_memory, largest_batch
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.models.architecture import Architecture
from ftcircuits.sizing.preset_size import ModelCounts

WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class GpuMemory:
    """Bytes per GPU, by part, and how each part was computed."""

    model_states: int
    frozen_weights: int
    activations: int
    estimator: str

    @property
    def total(self) -> int:
        return self.model_states + self.frozen_weights + self.activations


@dataclass(frozen=True)
class CircuitSettings:
    """What ``jobs.circuits --run`` runs at by default (``CircuitRunSettings``' defaults)."""

    batch_size: int | str  # pairs per batch, or "auto": the largest the GPU holds
    examples: int
    steps: int
    baselines: int


def circuit_settings() -> CircuitSettings:
    """Return ``CircuitRunSettings``' defaults."""
    from ftcircuits.config.discovery import CircuitRunSettings  # polars: kept out of jobs.bench_gpu's imports

    defaults = CircuitRunSettings()
    discovery = defaults.discovery
    return CircuitSettings(
        discovery.batch_size, discovery.examples, discovery.steps, len(defaults.robustness.baselines)
    )


@dataclass(frozen=True)
class CircuitSize:
    """What one circuit actor needs on its GPU: the whole model's weights and one circuit batch."""

    weights: int
    memory: CircuitMemory  # at the batch the actor runs
    requested: int | str  # the circuit settings' discovery.batch_size

    @property
    def total(self) -> int:
        return self.weights + self.memory.peak


def model_states_bytes(trainable: int, largest_layer: int, zero_stage: int, gpus: int) -> tuple[int, str]:
    """Return DeepSpeed's per-GPU estimate of the model states of ``trainable`` parameters (no offload) and
    the call that gave it. ZeRO 0 and 1 use the ZeRO-2 estimator over 1 GPU (nothing partitioned: an upper
    bound); ZeRO-3 gathers up to ``largest_layer`` parameters at a time."""
    if zero_stage == 3:
        _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
            total_params=trainable, largest_layer_params=largest_layer, num_gpus_per_node=gpus, num_nodes=1,
            cpu_offload=False, cpu_offload_params=False,
        )  # fmt: skip
        call = (
            f"estimate_zero3_model_states_mem_needs(total_params={trainable:,}, largest_layer_params="
            f"{largest_layer:,}, num_gpus_per_node={gpus}, num_nodes=1, cpu_offload=False, "
            "cpu_offload_params=False)"
        )
        return gpu_bytes, call
    partitioned = gpus if zero_stage == 2 else 1
    _, gpu_bytes = estimate_zero2_model_states_mem_needs(
        total_params=trainable, num_gpus_per_node=partitioned, num_nodes=1, cpu_offload=False
    )
    call = (
        f"estimate_zero2_model_states_mem_needs(total_params={trainable:,}, num_gpus_per_node={partitioned}, "
        "num_nodes=1, cpu_offload=False)"
    )
    return gpu_bytes, call


def activation_bytes(arch: Architecture, micro_batch: int, sequence: int, precision: str) -> int:
    """Return the activations of one micro-batch kept for the backward pass (the module docstring's
    formula), scaled to 4-byte activations under fp32."""
    s, b, h, a = sequence, micro_batch, arch.d_model, arch.heads
    per_layer = s * b * h * (34 + 5 * a * s / h)
    width = WEIGHT_BYTES[precision]
    logits = s * b * arch.vocab * (width + 4)
    return int(arch.layers * per_layer * width / 2 + logits)


def gpu_memory(config: FinetuneConfig, counts: ModelCounts, sequence_tokens: int) -> GpuMemory:
    """Return the memory one GPU (one DeepSpeed rank) needs for ``config`` at ``sequence_tokens`` per item."""
    ranks, stage = config.scaling.workers, config.deepspeed.zero_stage
    states, call = model_states_bytes(counts.trainable, counts.largest_layer, stage, ranks)
    frozen = counts.frozen * WEIGHT_BYTES[config.deepspeed.precision] // (ranks if stage == 3 else 1)
    activations = activation_bytes(
        counts.arch, config.train.micro_batch_size, sequence_tokens, config.deepspeed.precision
    )
    return GpuMemory(states, frozen, activations, call)


def circuit_size(
    counts: ModelCounts, precision: str, length: int, settings: CircuitSettings, examples: int, usable: int
) -> CircuitSize:
    """Return what one circuit actor needs: the model's weights in ``precision`` and one batch at the default
    batch size (at most ``examples``; for ``"auto"``, the largest batch ``usable`` bytes hold, at least 1)."""
    weights = counts.total * WEIGHT_BYTES[precision]
    dtype = DTYPES[precision]
    requested = settings.batch_size
    if requested == "auto":
        fitting = largest_batch(counts.arch, length, settings.steps, dtype, usable - weights)
        batch = max(1, min(examples, fitting))
    else:
        batch = min(int(requested), examples)
    return CircuitSize(weights, circuit_memory(counts.arch, batch, length, settings.steps, dtype), requested)
