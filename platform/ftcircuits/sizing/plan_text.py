"""The scale plan as text: the run, fine-tuning and circuits memory per GPU, the node type that holds both,
GPU-hours from measured throughput, each figure's source."""

from __future__ import annotations

from pathlib import Path

from ftcircuits.circuits.graph import Graph
from ftcircuits.circuits.memory import MEMORY_SLACK, floor_figure
from ftcircuits.sizing.gpu_memory import WEIGHT_BYTES
from ftcircuits.sizing.node_types import GIB, GpuNodeType
from ftcircuits.sizing.plan_figures import figure
from ftcircuits.sizing.scale_plan import Placement, ScalePlan


def _gib(n: int) -> str:
    return f"{n / GIB:6.2f} GiB"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _placement(placement: Placement) -> str:
    return f"{placement.node_type.name} on {_count(placement.nodes, 'node')}"


def finetune_lines(plan: ScalePlan) -> list[str]:
    """Return the fine-tuning memory per GPU, by part, with the estimator of each."""
    config, counts, size, memory = plan.config, plan.counts, plan.size, plan.memory
    ranks, stage, precision = config.scaling.workers, config.deepspeed.zero_stage, config.deepspeed.precision
    frozen_where = (
        f" / {_count(ranks, 'GPU')} (ZeRO-3 partitions them)" if stage == 3 else ", whole on every GPU"
    )
    lines = [
        f"Fine-tuning memory per GPU (ZeRO-{stage} over {_count(ranks, 'rank')}; micro-batch "
        f"{config.train.micro_batch_size} x {size.sequence_tokens} tokens)",
        f"  model states   {_gib(memory.model_states)}  DeepSpeed {memory.estimator}",
        f"  frozen weights {_gib(memory.frozen_weights)}  {counts.frozen:,} x {WEIGHT_BYTES[precision]} "
        f"bytes ({precision}){frozen_where}",
        f"  activations    {_gib(memory.activations)}  layers x s x b x h x (34 + 5 a s / h) bytes in 16-bit "
        "(Korthikanti et al. 2022, no recomputation) + logits s x b x vocab x (2 + 4) bytes",
        f"  total          {_gib(memory.total)}",
    ]
    if config.method.name != "fpft":
        lines.append(
            "  PEFT: DeepSpeed's estimator takes every parameter as trainable, so it runs over the trainable "
            "ones only; the frozen weights count apart at their precision"
        )
    return lines


def circuit_lines(plan: ScalePlan) -> list[str]:
    """Return the circuits' memory on one GPU (weights, attribution, evaluation), from circuits/memory.py."""
    counts, circuits, precision = plan.counts, plan.circuits, plan.config.deepspeed.precision
    memory, arch = circuits.memory, counts.arch
    requested = (
        f"batch_size auto: the largest batch the GPU holds, {memory.batch}"
        if circuits.requested == "auto"
        else f"batch_size {circuits.requested}"
    )
    floor = floor_figure(arch)
    return [
        f"Circuits memory per GPU (jobs.circuits --run: one actor holds the whole model on one GPU; "
        f"discovery.{requested}, x {memory.length} tokens, m = {memory.steps}, {precision}; "
        "circuits/memory.py)",
        f"  weights        {_gib(circuits.weights)}  {counts.total:,} x {WEIGHT_BYTES[precision]} bytes "
        f"({precision})",
        f"  attribution    {_gib(memory.attribution)}  {MEMORY_SLACK} x (floor {memory.floor / GIB:.2f} + "
        f"difference buffer {memory.buffer / GIB:.2f} GiB): floor = layers x {memory.steps * memory.batch} "
        f"sequences x {memory.length} tokens x d x {floor.value:g} bytes ({arch.family}) + the logits and "
        f"their gradient; buffer = {Graph.of(arch).n_sources:,} sources x B x T x d in {precision}",
        f"  evaluation     {_gib(memory.evaluation)}  one source buffer in the score dtype + one layer's "
        "patched head inputs + logits (no gradients)",
        f"  total          {_gib(circuits.total)}  weights + the larger of attribution and evaluation",
    ]


def _node_line(plan: ScalePlan, node: GpuNodeType) -> str:
    finetune = next((p for p in plan.finetune_fits if p.node_type == node), None)
    finetune_text = (
        f"fine-tuning on {_count(finetune.nodes, 'node')}" if finetune else "fine-tuning does not fit"
    )
    circuit_text = "circuits fit" if node in plan.circuit_fits else "circuits do not fit"
    return (
        f"  {node.describe()}: {node.usable_gpu_memory / GIB:.2f} GiB usable; {finetune_text}, {circuit_text}"
    )


def node_lines(plan: ScalePlan, cluster_yaml: Path) -> list[str]:
    """Return the node type chosen (it holds both stages), or why none is, and what fits on each."""
    need = (
        f"fine-tuning {plan.memory.total / GIB:.2f} GiB per GPU, circuits {plan.circuits.total / GIB:.2f} GiB"
    )
    node = plan.node_type
    if node is None:
        head = f"Node type ({cluster_yaml}): none holds both stages ({need})"
    else:
        others = ", ".join(_placement(p) for p in plan.fits[1:]) or "none"
        head = (
            f"Node type ({cluster_yaml}): {node.describe()} on {_count(plan.fits[0].nodes, 'node')}: "
            f"{need}, of {node.usable_gpu_memory / GIB:.2f} GiB usable per GPU; also holds both: {others}"
        )
    return [head, *(_node_line(plan, n) for n in plan.node_types)]


def figure_lines(plan: ScalePlan) -> list[str]:
    """Return every figure the plan used, with its source."""
    node = plan.node_type
    keys = ["sequence_tokens", "usable_memory_share"]
    if node is not None:
        keys += [f"gpu_memory_gib.{node.gpu}", f"bf16_tflops.{node.gpu}"]
    lines = [f"  {key} = {figure(key).value:g}: {figure(key).source}" for key in keys]
    floor = floor_figure(plan.counts.arch)
    lines += [
        f"  floor bytes ({plan.counts.arch.family}) = {floor.value:g}: {floor.source}",
        f"  MEMORY_SLACK = {MEMORY_SLACK}: circuits/memory.py, attribution's peak at most this times "
        "(floor + buffer), which jobs.bench_eap and jobs.bench_gpu check",
    ]
    timings = {t.measured: t.source for stage in plan.stages for t in stage.throughputs}  # each once
    return lines + [f"  {measured}: {source}" for measured, source in timings.items()]


def format_plan(plan: ScalePlan, name: str, cluster_yaml: Path) -> str:
    """Return the plan as text: the run, memory per GPU of both stages, the node type, GPU-hours, each
    figure's source."""
    config, counts, size = plan.config, plan.counts, plan.size
    arch, method = counts.arch, config.method
    ranks, per_worker = config.scaling.workers, int(config.scaling.gpus_per_worker)
    method_text = method.name + (f" r={method.r}" if method.name in ("lora", "adalora") else "")
    lines = [
        f"{name}: {config.model}, {method_text}, ZeRO-{config.deepspeed.zero_stage}, "
        f"{config.deepspeed.precision}, {_count(ranks, 'worker')} x {_count(per_worker, 'GPU')}",
        f"  model: {counts.shape}, {counts.total:,} parameters ({arch.layers} layers, "
        f"d_model {arch.d_model}, {arch.heads} heads, vocab {arch.vocab}); {counts.trainable:,} trainable "
        f"({100 * counts.trainable / counts.total:.2f}%), {counts.frozen:,} frozen; {counts.edges:,} edges",
        f"  data: {config.task.dataset_name()}, {size.finetune_items:,} fine-tune items (before drops) x "
        f"{_count(config.train.epochs, 'epoch')} -> {size.steps} optimiser steps, "
        f"{size.checkpoints} checkpoints",
        "",
        *finetune_lines(plan),
        "",
        *circuit_lines(plan),
        "",
        *node_lines(plan, cluster_yaml),
    ]
    node = plan.node_type
    if node is not None:
        lines += [
            "",
            f"GPU-hours on {node.gpu} ({node.bf16_flops / 1e12:.0f} TFLOP/s dense BF16), from measured "
            "throughput read as model-FLOPs utilisation (MFU)",
            *(f"  {s.name:12s} {s.gpu_hours:6.2f}  {s.detail}" for s in plan.stages),
            f"  {'total':12s} {plan.gpu_hours:6.2f}  (not counted: model loading, checkpoint I/O, start-up, "
            "communication between GPUs)",
        ]
    return "\n".join([*lines, "", "Figures:", *figure_lines(plan)])
