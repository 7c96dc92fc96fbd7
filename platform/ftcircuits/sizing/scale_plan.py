"""How a fine-tuning preset sizes on GPUs: the node type of the cluster config that holds both its
fine-tuning and its circuits (memory from ``sizing/gpu_memory.py``), and GPU-hours of its fine-tuning and
of the circuits over its checkpoints from measured throughput (``sizing/throughput.py``; the figures of
``plan_figures``, each with its source)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ftcircuits.circuits.evaluation import DEFAULT_BUDGETS
from ftcircuits.circuits.nodes import DEFAULT_NODE_BUDGETS
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.sizing.gpu_memory import (
    CircuitSettings,
    CircuitSize,
    GpuMemory,
    circuit_settings,
    circuit_size,
    gpu_memory,
)
from ftcircuits.sizing.node_types import GpuNodeType, gpu_node_types
from ftcircuits.sizing.preset_size import ModelCounts, PlanError, RunSize, model_counts, run_size
from ftcircuits.sizing.throughput import (
    Throughput,
    attribution_flops_per_token,
    circuit_throughput,
    evaluation_flops_per_token,
    finetune_flops_per_token,
    finetune_kind,
    finetune_throughput,
)
from ftcircuits.tasks.spec import PERTURB_RATIOS


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
    curve_points = len(DEFAULT_BUDGETS) + len(DEFAULT_NODE_BUDGETS)  # the edge and the node curve
    evaluations = size.checkpoints * (1 + curve_points) + robustness_units
    units = size.checkpoints + robustness_units
    seconds = examples / batch * (units * attribution_s + evaluations * evaluation_s)
    detail = (
        f"{size.checkpoints} checkpoint circuits with faithfulness curves ({len(DEFAULT_BUDGETS)} edge and "
        f"{len(DEFAULT_NODE_BUDGETS)} node budgets) + "
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
