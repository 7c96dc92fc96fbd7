"""Every figure the scale plan uses, with where it comes from: GPU specs, EC2 instances, and assumptions.

No GPU has run this project yet, so throughput is peak FLOPs times an assumed utilisation; a figure
whose source starts with "assumed:" is a guess to replace with a measurement ("measured: ...").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """A number and where it comes from ("spec: ...", "assumed: ...", "measured: ...")."""

    value: float
    source: str


FIGURES: dict[str, Figure] = {
    "sequence_tokens": Figure(
        32,
        "assumed: the paper's max length (reference/paper.md); Add/Sub prompts with the instruction "
        "prefix are shorter, so for the paper presets this is an upper bound",
    ),
    "usable_memory_share": Figure(
        0.9, "assumed: the CUDA context, allocator fragmentation and NCCL buffers take 10% of a GPU's memory"
    ),
    "mfu.finetune": Figure(
        0.2,
        "assumed: model-FLOPs utilisation of fine-tuning in 256-token micro-batches (8 x 32); not measured",
    ),
    "mfu.circuits": Figure(
        0.2,
        "assumed: model-FLOPs utilisation of EAP-IG (32 pairs x 5 steps per batch; its per-edge products "
        "are memory-bound); not measured",
    ),
    "gpu_memory_gib.A10G": Figure(24, "spec: NVIDIA A10G, 24 GB GDDR6"),
    "gpu_memory_gib.A100-40GB": Figure(40, "spec: NVIDIA A100 40GB SXM4"),
    "gpu_memory_gib.A100-80GB": Figure(80, "spec: NVIDIA A100 80GB SXM4"),
    "gpu_memory_gib.H100": Figure(80, "spec: NVIDIA H100 SXM5, 80 GB HBM3"),
    "gpu_memory_gib.L40S": Figure(48, "spec: NVIDIA L40S, 48 GB GDDR6"),
    "bf16_tflops.A10G": Figure(
        70,
        "spec: dense BF16 tensor peak of the A10G (AWS's variant; the A10's 125 does not apply), as "
        "tabulated in Baseten's 'NVIDIA A10 vs A10G for ML model inference'",
    ),
    "bf16_tflops.A100-40GB": Figure(312, "spec: NVIDIA A100 datasheet, dense BF16 tensor"),
    "bf16_tflops.A100-80GB": Figure(312, "spec: NVIDIA A100 datasheet, dense BF16 tensor"),
    "bf16_tflops.H100": Figure(
        989, "spec: NVIDIA H100 SXM datasheet, dense BF16 tensor (1979 with sparsity)"
    ),
    "bf16_tflops.L40S": Figure(362, "spec: NVIDIA L40S datasheet, dense BF16 tensor (733 with sparsity)"),
}

# EC2 instance type -> (GPU model, GPUs per instance); spec: AWS's accelerated-computing instance types.
INSTANCE_GPUS: dict[str, tuple[str, int]] = {
    **{f"g5.{size}": ("A10G", 1) for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g5.12xlarge": ("A10G", 4),
    "g5.24xlarge": ("A10G", 4),
    "g5.48xlarge": ("A10G", 8),
    "g6e.12xlarge": ("L40S", 4),
    "g6e.48xlarge": ("L40S", 8),
    "p4d.24xlarge": ("A100-40GB", 8),
    "p4de.24xlarge": ("A100-80GB", 8),
    "p5.48xlarge": ("H100", 8),
}


def figure(name: str) -> Figure:
    """Return the figure ``name``; KeyError naming the known figures for an unknown one."""
    try:
        return FIGURES[name]
    except KeyError:
        raise KeyError(f"no figure {name!r}; known: {', '.join(sorted(FIGURES))}") from None
