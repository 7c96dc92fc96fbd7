"""How a fine-tuning preset sizes on GPUs, without a model download: per-GPU memory from DeepSpeed's own
estimators, the node type of the cluster config it fits, and GPU-hours of its fine-tuning and of the
circuits over its checkpoints (from the figures of ``plan_figures``, each with its source).

Memory per GPU is model states + frozen weights + activations:
- model states: DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs`` (what its ``*_all_cold``
  functions print), without offload. The estimator takes every parameter as trainable (16-bit
  weights and gradients, fp32 master weights and Adam states), so for PEFT it runs over the
  trainable parameters only, and the frozen weights are counted apart at their own precision
  (2 bytes in bf16/fp16): whole on every GPU under ZeRO 0-2, partitioned under ZeRO-3;
- activations: ``layers * s * b * h * (34 + 5 a s / h)`` bytes in 16-bit (Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", no recomputation), plus the
  logits ``s * b * vocab`` in 16-bit and in fp32 for the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from transformers import PreTrainedModel

from ftcircuits.circuits.evaluation import DEFAULT_BUDGETS
from ftcircuits.circuits.graph import Graph
from ftcircuits.cluster.node_types import GpuNodeType, gpu_node_types
from ftcircuits.cluster.plan_figures import figure
from ftcircuits.config.data import PERTURB_RATIOS
from ftcircuits.config.discovery import CircuitRunConfig
from ftcircuits.config.training import FinetuneConfig
from ftcircuits.finetune.methods import apply_method, trainable_parameters
from ftcircuits.finetune.schedule import optimizer_steps
from ftcircuits.models.architecture import Architecture, describe_architecture
from ftcircuits.models.loader import SHAPE_PREFIX, TINY, model_skeleton
from ftcircuits.models.shapes import build_same_shape, known_shapes, shape_for_hub_id

WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


class PlanError(ValueError):
    """A preset the plan cannot size: not on GPUs, a model with no known shape, too few items."""


@dataclass(frozen=True)
class ModelCounts:
    """Parameter counts of a preset's model under its method, and the shape they come from."""

    shape: str  # "shape opt-6.7b" or "config.json of <dir>"
    total: int  # parameters of the base model
    trainable: int  # under the method (adapters, or everything for FPFT)
    frozen: int
    largest_layer: int  # parameters of the largest module: ZeRO-3 gathers one module at a time
    arch: Architecture
    edges: int  # edges of the circuit graph


@dataclass(frozen=True)
class RunSize:
    """How much a preset trains and evaluates."""

    finetune_items: int
    circuit_items: int
    steps: int
    checkpoints: int  # step 0 (the base), every checkpoint_every steps, and the last
    sequence_tokens: int


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
class StageHours:
    """GPU-hours of one stage and what they are made of."""

    name: str
    gpu_hours: float
    detail: str


@dataclass(frozen=True)
class Placement:
    """A node type that holds the run, and how many of its nodes the run's workers take."""

    node_type: GpuNodeType
    nodes: int


@dataclass(frozen=True)
class ScalePlan:
    """The plan of one preset on one cluster config."""

    config: FinetuneConfig
    counts: ModelCounts
    size: RunSize
    memory: GpuMemory
    fits: list[Placement]  # best first (``placements``); empty when none fits
    node_types: list[GpuNodeType]
    stages: list[StageHours]  # on the best placement's GPU; empty when nothing fits

    @property
    def node_type(self) -> GpuNodeType | None:
        """The node type the run goes to (None when none fits)."""
        return self.fits[0].node_type if self.fits else None

    @property
    def gpu_hours(self) -> float:
        """Total GPU-hours of the stages (0 when nothing fits)."""
        return math.fsum(s.gpu_hours for s in self.stages)


def plan_skeleton(source: str) -> tuple[PreTrainedModel, str]:
    """Return ``source``'s model on the meta device and where its shape came from, reading no hub:
    a shipped shape (``shape:NAME`` or its hub id) or a local model directory."""
    name = source.removeprefix(SHAPE_PREFIX) if source.startswith(SHAPE_PREFIX) else shape_for_hub_id(source)
    if name is not None:
        if name not in known_shapes():
            raise PlanError(f"unknown model shape {name!r}; known: {', '.join(known_shapes())}")
        return build_same_shape(name, device="meta"), f"shape {name}"
    if source == TINY or Path(source).expanduser().is_dir():
        return model_skeleton(source)[0], f"config.json of {source}"
    raise PlanError(
        f"model {source!r} has no known shape: the plan reads shapes offline, from a shipped shape "
        f"({', '.join(known_shapes())}, by hub id or as shape:NAME) or a local model directory"
    )


def model_counts(config: FinetuneConfig, steps: int) -> ModelCounts:
    """Return the parameter counts of ``config``'s model under its method (PEFT applied on the meta
    device; trainable tokens counted by placeholder ids, since only their number matters)."""
    model, shape = plan_skeleton(config.model)
    arch = describe_architecture(model.config)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    token_ids = list(range(len(config.method.trainable_tokens)))
    with torch.device("meta"):
        wrapped = apply_method(model, arch, config.method, total_steps=steps, token_ids=token_ids)
    trainable = trainable_parameters(wrapped)
    frozen = sum(p.numel() for p in wrapped.parameters() if not p.requires_grad)
    return ModelCounts(shape, total, trainable, frozen, largest, arch, Graph.of(arch).n_edges)


def run_size(config: FinetuneConfig) -> RunSize:
    """Return the items, optimiser steps and checkpoints of ``config`` (the split before any drops)."""
    items = config.task.items()
    circuit_items = round(config.task.circuit_share * items)
    finetune_items = items - circuit_items
    train = config.train
    steps = optimizer_steps(
        finetune_items, train.epochs, train.micro_batch_size, config.scaling.workers, train.grad_accumulation
    )
    if steps < 1:
        raise PlanError(
            f"{finetune_items} fine-tune items make no optimiser step with {config.scaling.workers} "
            f"workers x micro-batch {train.micro_batch_size} x accumulation {train.grad_accumulation}"
        )
    checkpoints = 1 + steps // train.checkpoint_every + (1 if steps % train.checkpoint_every else 0)
    return RunSize(finetune_items, circuit_items, steps, checkpoints, int(figure("sequence_tokens").value))


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


def gpu_memory(config: FinetuneConfig, counts: ModelCounts, size: RunSize) -> GpuMemory:
    """Return the memory one GPU (one DeepSpeed rank) needs for ``config``."""
    ranks, stage = config.scaling.workers, config.deepspeed.zero_stage
    states, call = model_states_bytes(counts.trainable, counts.largest_layer, stage, ranks)
    frozen = counts.frozen * WEIGHT_BYTES[config.deepspeed.precision] // (ranks if stage == 3 else 1)
    activations = activation_bytes(
        counts.arch, config.train.micro_batch_size, size.sequence_tokens, config.deepspeed.precision
    )
    return GpuMemory(states, frozen, activations, call)


def placements(config: FinetuneConfig, need: int, node_types: list[GpuNodeType]) -> list[Placement]:
    """Return the node types whose GPUs hold ``need`` bytes and whose nodes (up to their ``max_workers``)
    host every worker, best first: one node before several (ZeRO's collectives stay on the node's
    links), then the smallest GPU memory, then the fewest GPUs."""
    per_worker, workers = int(config.scaling.gpus_per_worker), config.scaling.workers
    found = []
    for node in node_types:
        per_node = node.gpus // per_worker
        if node.usable_gpu_memory < need or per_node == 0:
            continue
        nodes = math.ceil(workers / per_node)
        if nodes <= node.max_workers:
            found.append(Placement(node, nodes))
    return sorted(found, key=lambda p: (p.nodes > 1, p.node_type.gpu_memory, p.node_type.gpus))


def finetune_hours(
    config: FinetuneConfig, counts: ModelCounts, size: RunSize, node: GpuNodeType
) -> StageHours:
    """Return the GPU-hours of training and of the held-out evaluation at every checkpoint."""
    train = config.train
    sequences = size.steps * train.micro_batch_size * train.grad_accumulation * config.scaling.workers
    tokens = sequences * size.sequence_tokens
    per_token = 6 if config.method.name == "fpft" else 4
    eval_tokens = size.checkpoints * size.circuit_items * size.sequence_tokens
    flops = tokens * per_token * counts.total + eval_tokens * 2 * counts.total
    hours = flops / (node.bf16_flops * figure("mfu.finetune").value) / 3600
    kind = (
        "forward + all gradients" if per_token == 6 else "forward + input gradients; frozen weights get none"
    )
    detail = (
        f"{size.steps} steps x {sequences // size.steps} sequences x {size.sequence_tokens} tokens = "
        f"{tokens:,} tokens at {per_token}N ({kind}) + {size.checkpoints} held-out evaluations x "
        f"{size.circuit_items:,} items at 2N"
    )
    return StageHours("fine-tuning", hours, detail)


def circuit_hours(counts: ModelCounts, size: RunSize, node: GpuNodeType) -> StageHours:
    """Return the GPU-hours of ``jobs.circuits --run`` at its defaults: every checkpoint's circuit with its
    faithfulness curve, and the robustness circuits of the base and each baseline on every perturbed split."""
    defaults = CircuitRunConfig.model_fields
    examples = min(defaults["examples"].default, size.circuit_items)
    m = defaults["steps"].default
    baselines = len(defaults["baselines"].default_factory())
    robustness_units = (1 + baselines) * (1 + len(PERTURB_RATIOS))
    n, edge_products = counts.total, 2 * counts.edges * counts.arch.d_model
    attribution = (2 + 2 * m) * 2 * n + m * edge_products
    evaluation = 8 * n + edge_products  # full, empty, corrupted forwards; one patched forward
    per_token = size.checkpoints * (attribution + (1 + len(DEFAULT_BUDGETS)) * evaluation)
    per_token += robustness_units * (attribution + evaluation)
    flops = per_token * examples * size.sequence_tokens
    hours = flops / (node.bf16_flops * figure("mfu.circuits").value) / 3600
    detail = (
        f"{size.checkpoints} checkpoint circuits with faithfulness curves ({len(DEFAULT_BUDGETS)} budgets) + "
        f"{robustness_units} robustness circuits ((base + {baselines} baselines) x {1 + len(PERTURB_RATIOS)} "
        f"splits), {examples} examples x {size.sequence_tokens} tokens each; per token: attribution "
        f"(2 + 2m) 2N + m 2Ed, evaluation 8N + 2Ed per budget (m = {m}, E = {counts.edges:,} edges, "
        f"d = {counts.arch.d_model})"
    )
    return StageHours("circuits", hours, detail)


def check_plannable(config: FinetuneConfig) -> None:
    """Raise PlanError for a preset the plan cannot size on GPUs."""
    scaling = config.scaling
    if not scaling.use_gpu:
        raise PlanError("scaling.use_gpu is false: the plan sizes GPU runs (set scaling.use_gpu=true)")
    if scaling.gpus_per_worker < 1 or scaling.gpus_per_worker != int(scaling.gpus_per_worker):
        raise PlanError(
            f"scaling.gpus_per_worker is {scaling.gpus_per_worker}: the plan needs a whole number of GPUs "
            "per worker (one DeepSpeed rank per GPU)"
        )


def plan_run(config: FinetuneConfig, cluster_yaml: Path) -> ScalePlan:
    """Return the plan of the fine-tuning preset ``config`` on the cluster config ``cluster_yaml``."""
    check_plannable(config)
    node_types = gpu_node_types(cluster_yaml)
    size = run_size(config)
    counts = model_counts(config, size.steps)
    memory = gpu_memory(config, counts, size)
    fits = placements(config, memory.total, node_types)
    stages = []
    if fits:
        node = fits[0].node_type
        stages = [finetune_hours(config, counts, size, node), circuit_hours(counts, size, node)]
    return ScalePlan(config, counts, size, memory, fits, node_types, stages)
