"""What a fine-tuning preset runs, read offline: its model's parameter counts under its method (from a
shipped shape or a local config, on the meta device) and its items, optimiser steps and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ftcircuits.circuits.graph import Graph
from ftcircuits.finetune.methods import apply_method, trainable_parameters
from ftcircuits.finetune.schedule import optimizer_steps
from ftcircuits.finetune.settings import FinetuneConfig, MethodConfig
from ftcircuits.models.architecture import Architecture, describe_architecture
from ftcircuits.models.loader import SHAPE_PREFIX, TINY, model_skeleton
from ftcircuits.models.shapes import build_same_shape, known_shapes, shape_for_hub_id
from ftcircuits.sizing.plan_figures import figure


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
