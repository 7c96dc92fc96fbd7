"""The scale plan as text: the run, memory per GPU, the node type it fits, GPU-hours, each figure's source."""

from __future__ import annotations

from pathlib import Path

from ftcircuits.cluster.node_types import GIB
from ftcircuits.cluster.plan_figures import figure
from ftcircuits.cluster.scale_plan import WEIGHT_BYTES, Placement, ScalePlan


def _gib(n: int) -> str:
    return f"{n / GIB:6.2f} GiB"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _placement(placement: Placement) -> str:
    return f"{placement.node_type.name} on {_count(placement.nodes, 'node')}"


def format_plan(plan: ScalePlan, name: str, cluster_yaml: Path) -> str:
    """Return the plan as text: the run, memory per GPU, the node type, GPU-hours, each figure's source."""
    config, counts, size, memory = plan.config, plan.counts, plan.size, plan.memory
    arch, method = counts.arch, config.method
    ranks, per_worker = config.scaling.workers, int(config.scaling.gpus_per_worker)
    precision, stage = config.deepspeed.precision, config.deepspeed.zero_stage
    method_text = method.name + (f" r={method.r}" if method.name in ("lora", "adalora") else "")
    frozen_where = (
        f" / {_count(ranks, 'GPU')} (ZeRO-3 partitions them)" if stage == 3 else ", whole on every GPU"
    )
    lines = [
        f"{name}: {config.model}, {method_text}, ZeRO-{stage}, {precision}, "
        f"{_count(ranks, 'worker')} x {_count(per_worker, 'GPU')}",
        f"  model: {counts.shape}, {counts.total:,} parameters ({arch.layers} layers, "
        f"d_model {arch.d_model}, {arch.heads} heads, vocab {arch.vocab}); {counts.trainable:,} trainable "
        f"({100 * counts.trainable / counts.total:.2f}%), {counts.frozen:,} frozen",
        f"  data: {config.task.dataset_name()}, {size.finetune_items:,} fine-tune items (before drops) x "
        f"{_count(config.train.epochs, 'epoch')} -> {size.steps} optimiser steps, "
        f"{size.checkpoints} checkpoints",
        "",
        f"GPU memory per GPU (ZeRO-{stage} over {_count(ranks, 'rank')}; micro-batch "
        f"{config.train.micro_batch_size} x {size.sequence_tokens} tokens)",
        f"  model states   {_gib(memory.model_states)}  DeepSpeed {memory.estimator}",
        f"  frozen weights {_gib(memory.frozen_weights)}  {counts.frozen:,} x {WEIGHT_BYTES[precision]} "
        f"bytes ({precision}){frozen_where}",
        f"  activations    {_gib(memory.activations)}  layers x s x b x h x (34 + 5 a s / h) bytes in 16-bit "
        "(Korthikanti et al. 2022, no recomputation) + logits s x b x vocab x (2 + 4) bytes",
        f"  total          {_gib(memory.total)}",
    ]
    if method.name != "fpft":
        lines.append(
            "  PEFT: DeepSpeed's estimator takes every parameter as trainable, so it runs over the trainable "
            "ones only; the frozen weights count apart at their precision"
        )
    lines.append("")
    node = plan.node_type
    if node is None:
        largest = max(plan.node_types, key=lambda n: n.usable_gpu_memory)
        lines.append(
            f"Node type ({cluster_yaml}): none fits: {memory.total / GIB:.2f} GiB per GPU needed, "
            f"{largest.usable_gpu_memory / GIB:.2f} GiB usable on {largest.describe()}"
        )
        return "\n".join(lines)
    others = ", ".join(_placement(p) for p in plan.fits[1:]) or "none"
    lines += [
        f"Node type ({cluster_yaml}): {node.describe()} on {_count(plan.fits[0].nodes, 'node')}: "
        f"{memory.total / GIB:.2f} of {node.usable_gpu_memory / GIB:.2f} GiB usable per GPU; "
        f"also fits: {others}",
        "",
        f"GPU-hours on {node.gpu} ({node.bf16_flops / 1e12:.0f} TFLOP/s dense BF16 x MFU "
        f"{figure('mfu.finetune').value:.0%} fine-tuning, {figure('mfu.circuits').value:.0%} circuits)",
    ]
    lines += [f"  {s.name:12s} {s.gpu_hours:6.2f}  {s.detail}" for s in plan.stages]
    lines += [
        f"  {'total':12s} {plan.gpu_hours:6.2f}  (not counted: model loading, checkpoint I/O, start-up, "
        "communication between GPUs)",
        "  circuits' GPU memory is not sized here",
        "",
        "Figures:",
    ]
    used = ["sequence_tokens", "usable_memory_share", f"gpu_memory_gib.{node.gpu}", f"bf16_tflops.{node.gpu}",
            "mfu.finetune", "mfu.circuits"]  # fmt: skip
    lines += [f"  {key} = {figure(key).value:g}: {figure(key).source}" for key in used]
    return "\n".join(lines)
