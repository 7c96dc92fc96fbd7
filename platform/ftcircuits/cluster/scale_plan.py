"""How a fine-tuning preset sizes on GPUs, without a model download: per-GPU memory of its fine-tuning from
DeepSpeed's own estimators and of its circuits from ``circuits/memory.py``, the node type of the cluster
config that holds both, and GPU-hours of its fine-tuning and of the circuits over its checkpoints from
measured throughput (``cluster/throughput.py``; the figures of ``plan_figures``, each with its source).

Memory per GPU is model states + frozen weights + activations:
- model states: DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs`` (what its ``*_all_cold``
  functions print), without offload. The estimator takes every parameter as trainable (16-bit
  weights and gradients, fp32 master weights and Adam states), so for PEFT it runs over the
  trainable parameters only, and the frozen weights are counted apart at their own precision
  (2 bytes in bf16/fp16): whole on every GPU under ZeRO 0-2, partitioned under ZeRO-3;
- activations: ``layers * s * b * h * (34 + 5 a s / h)`` bytes in 16-bit (Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", no recomputation), plus the
  logits ``s * b * vocab`` in 16-bit and in fp32 for the loss.

Circuits (``jobs.circuits --run`` at ``CircuitRunConfig``'s defaults): one actor holds the whole model on
one GPU, in the preset's precision, plus one circuit batch: ``circuit_memory(...).peak`` (attribution or
evaluation, whichever is larger) at the default batch and the plan's sequence length.
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
from ftcircuits.circuits.memory import CircuitMemory, circuit_memory, largest_batch
from ftcircuits.cluster.node_types import GpuNodeType, gpu_node_types
from ftcircuits.cluster.plan_figures import figure
from ftcircuits.cluster.throughput import (
    Throughput,
    attribution_flops_per_token,
    circuit_throughput,
    evaluation_flops_per_token,
    finetune_flops_per_token,
    finetune_kind,
    finetune_throughput,
)
from ftcircuits.config.data import PERTURB_RATIOS
from ftcircuits.finetune.methods import apply_method, trainable_parameters
from ftcircuits.finetune.schedule import optimizer_steps
from ftcircuits.finetune.settings import FinetuneConfig, MethodConfig
from ftcircuits.models.architecture import Architecture, describe_architecture
from ftcircuits.models.loader import SHAPE_PREFIX, TINY, model_skeleton
from ftcircuits.models.shapes import build_same_shape, known_shapes, shape_for_hub_id

WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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
    name: str | None = None  # the shipped shape's name, if the model has one


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
class CircuitSettings:
    """What ``jobs.circuits --run`` runs at by default (``CircuitRunConfig``'s defaults)."""

    batch_size: int | str  # pairs per batch, or "auto": the largest the GPU holds
    examples: int
    steps: int
    baselines: int


def circuit_settings() -> CircuitSettings:
    """Return ``CircuitRunConfig``'s defaults."""
    from ftcircuits.config.discovery import CircuitRunConfig  # polars: kept out of jobs.bench_gpu's imports

    fields = CircuitRunConfig.model_fields
    return CircuitSettings(
        fields["batch_size"].default, fields["examples"].default, fields["steps"].default,
        len(fields["baselines"].default_factory()),
    )  # fmt: skip


@dataclass(frozen=True)
class CircuitSize:
    """What one circuit actor needs on its GPU: the whole model's weights and one circuit batch."""

    weights: int
    memory: CircuitMemory  # at the batch the actor runs
    requested: int | str  # CircuitRunConfig's batch_size

    @property
    def total(self) -> int:
        return self.weights + self.memory.peak


@dataclass(frozen=True)
class StageHours:
    """GPU-hours of one stage, what they are made of, and the measured throughput behind them."""

    name: str
    gpu_hours: float
    detail: str
    throughputs: tuple[Throughput, ...] = ()


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
    memory: GpuMemory  # fine-tuning, per GPU
    circuits: CircuitSize  # one circuit actor, on the chosen node type's GPU (the largest GPU if none)
    fits: list[Placement]  # node types holding both stages, best first; empty when none does
    finetune_fits: list[Placement]  # node types holding the fine-tuning (``placements``)
    circuit_fits: list[GpuNodeType]  # node types one of whose GPUs holds a circuit actor
    node_types: list[GpuNodeType]
    stages: list[StageHours]  # on the best placement's GPU; empty when nothing fits

    @property
    def node_type(self) -> GpuNodeType | None:
        """The node type the run goes to: it holds the fine-tuning and the circuits (None when none does)."""
        return self.fits[0].node_type if self.fits else None

    @property
    def gpu_hours(self) -> float:
        """Total GPU-hours of the stages (0 when nothing fits)."""
        return math.fsum(s.gpu_hours for s in self.stages)


def plan_skeleton(source: str) -> tuple[PreTrainedModel, str, str | None]:
    """Return ``source``'s model on the meta device, where its shape came from and the shipped shape's name,
    reading no hub: a shipped shape (``shape:NAME`` or its hub id) or a local model directory."""
    name = source.removeprefix(SHAPE_PREFIX) if source.startswith(SHAPE_PREFIX) else shape_for_hub_id(source)
    if name is not None:
        if name not in known_shapes():
            raise PlanError(f"unknown model shape {name!r}; known: {', '.join(known_shapes())}")
        return build_same_shape(name, device="meta"), f"shape {name}", name
    if source == TINY or Path(source).expanduser().is_dir():
        return model_skeleton(source)[0], f"config.json of {source}", None
    raise PlanError(
        f"model {source!r} has no known shape: the plan reads shapes offline, from a shipped shape "
        f"({', '.join(known_shapes())}, by hub id or as shape:NAME) or a local model directory"
    )


def model_counts(config: FinetuneConfig, steps: int) -> ModelCounts:
    """Return the parameter counts of ``config``'s model under its method."""
    model, shape, name = plan_skeleton(config.model)
    return counts_under_method(model, config.method, steps, shape, name)


def counts_under_method(
    model: PreTrainedModel, method: MethodConfig, steps: int, shape: str, name: str | None = None
) -> ModelCounts:
    """Return the parameter counts of ``model`` (on the meta device) under ``method`` (PEFT applied on the
    meta device; trainable tokens counted by placeholder ids, since only their number matters)."""
    arch = describe_architecture(model.config)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    token_ids = list(range(len(method.trainable_tokens)))
    with torch.device("meta"):
        wrapped = apply_method(model, arch, method, total_steps=steps, token_ids=token_ids)
    trainable = trainable_parameters(wrapped)
    frozen = sum(p.numel() for p in wrapped.parameters() if not p.requires_grad)
    return ModelCounts(shape, total, trainable, frozen, largest, arch, Graph.of(arch).n_edges, name)


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
    """Return the GPU-hours of training and of the held-out evaluation at every checkpoint, at the measured
    throughput (as MFU) of the closest measured setting, on ``node``'s GPU."""
    train, method = config.train, config.method.name
    throughput = finetune_throughput(method, config.deepspeed.zero_stage, counts.name)
    micro_batches = size.steps * train.grad_accumulation * config.scaling.workers
    per_token = finetune_flops_per_token(method, counts.total)
    micro_tokens = train.micro_batch_size * size.sequence_tokens
    micro_seconds = throughput.seconds(micro_tokens * per_token, node.gpu)
    eval_tokens = size.checkpoints * size.circuit_items * size.sequence_tokens
    eval_seconds = throughput.seconds(eval_tokens * 2 * counts.total, node.gpu)
    hours = (micro_batches * micro_seconds + eval_seconds) / 3600
    multiple = per_token // counts.total
    kind = (
        "forward + all gradients"
        if finetune_kind(method) == "fpft"
        else "forward + input gradients; frozen weights get none"
    )
    detail = (
        f"{micro_batches:,} micro-batches ({size.steps} steps x {micro_batches // size.steps}) of "
        f"{train.micro_batch_size} x {size.sequence_tokens} tokens at {micro_seconds:.3f} s each "
        f"({micro_tokens / micro_seconds:,.0f} tokens/s per GPU; {multiple}N per token: {kind}) + "
        f"{size.checkpoints} held-out evaluations x {size.circuit_items:,} items at 2N per token "
        f"({eval_seconds / 60:.1f} min, at fine-tuning's MFU: an assumption); MFU {throughput.mfu:.2%} of "
        f"{throughput.measured} ({throughput.choice})"
    )
    return StageHours("fine-tuning", hours, detail, (throughput,))


def circuit_hours(
    counts: ModelCounts, size: RunSize, node: GpuNodeType, circuits: CircuitSize, precision: str,
    settings: CircuitSettings,
) -> StageHours:  # fmt: skip
    """Return the GPU-hours of ``jobs.circuits --run`` at its defaults: every checkpoint's circuit with its
    faithfulness curve, and the robustness circuits of the base and each baseline on every perturbed split,
    at the measured throughput (as MFU) of the closest measured attribution and evaluation."""
    examples = min(settings.examples, size.circuit_items)
    m, batch, length = settings.steps, circuits.memory.batch, size.sequence_tokens
    robustness_units = (1 + settings.baselines) * (1 + len(PERTURB_RATIOS))
    n, edges, d = counts.total, counts.edges, counts.arch.d_model
    attribution = circuit_throughput("attribution", counts.name, precision, batch)
    evaluation = circuit_throughput("evaluation", counts.name, precision, batch)
    tokens = batch * length
    attribution_s = attribution.seconds(tokens * attribution_flops_per_token(n, edges, d, m), node.gpu)
    evaluation_s = evaluation.seconds(tokens * evaluation_flops_per_token(n, edges, d), node.gpu)
    evaluations = size.checkpoints * (1 + len(DEFAULT_BUDGETS)) + robustness_units
    units = size.checkpoints + robustness_units
    seconds = examples / batch * (units * attribution_s + evaluations * evaluation_s)
    detail = (
        f"{size.checkpoints} checkpoint circuits with faithfulness curves ({len(DEFAULT_BUDGETS)} budgets) + "
        f"{robustness_units} robustness circuits ((base + {settings.baselines} baselines) x "
        f"{1 + len(PERTURB_RATIOS)} splits), {examples} examples each, in batches of {batch} x {length} "
        "tokens: "
        f"attribution {attribution_s:.3f} s per batch ((2 + 2m) 2N + m 2Ed per token, m = {m}, "
        f"E = {edges:,} edges, d = {d}; MFU {attribution.mfu:.2%} of {attribution.measured}, "
        f"{attribution.choice}), evaluation {evaluation_s:.3f} s per batch (8N + 2Ed per token; "
        f"MFU {evaluation.mfu:.2%} of {evaluation.measured}, {evaluation.choice}), {evaluations} evaluations"
    )
    return StageHours("circuits", seconds / 3600, detail, (attribution, evaluation))


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
    """Return the plan of the fine-tuning preset ``config`` on the cluster config ``cluster_yaml``: the node
    type must hold both the fine-tuning (per GPU) and a circuit actor (on one of its GPUs)."""
    check_plannable(config)
    node_types = gpu_node_types(cluster_yaml)
    size = run_size(config)
    counts = model_counts(config, size.steps)
    memory = gpu_memory(config, counts, size.sequence_tokens)
    settings, precision = circuit_settings(), config.deepspeed.precision
    examples = min(settings.examples, size.circuit_items)

    def actor(node: GpuNodeType) -> CircuitSize:
        usable = node.usable_gpu_memory
        return circuit_size(counts, precision, size.sequence_tokens, settings, examples, usable)

    finetune_fits = placements(config, memory.total, node_types)
    circuit_fits = sorted(
        (node for node in node_types if actor(node).total <= node.usable_gpu_memory),
        key=lambda node: (node.gpu_memory, node.gpus),
    )
    fits = [p for p in finetune_fits if p.node_type in circuit_fits]
    stages = []
    if fits:
        node = fits[0].node_type
        circuits = actor(node)
        stages = [
            finetune_hours(config, counts, size, node),
            circuit_hours(counts, size, node, circuits, precision, settings),
        ]
    else:
        circuits = actor(max(node_types, key=lambda node: node.usable_gpu_memory))
    return ScalePlan(
        config, counts, size, memory, circuits, fits, finetune_fits, circuit_fits, node_types, stages
    )
