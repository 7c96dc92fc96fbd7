"""Every figure the scale plan uses, with where it comes from: GPU specs, EC2 instances, measurements.

A figure's source starts with "spec: ", "assumed: " or "measured: ". Time comes from measured timings
(``FINETUNE_TIMINGS``, ``CIRCUIT_TIMINGS``: one GPU, random weights of a shipped shape), read as model-FLOPs
utilisation by ``sizing/throughput.py``; ``python -m jobs.bench_gpu`` measures them again and prints the
lines to paste here.
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
    "gpu_memory_gib.A10G": Figure(24, "spec: NVIDIA A10G, 24 GB GDDR6"),
    "gpu_memory_gib.A100-40GB": Figure(40, "spec: NVIDIA A100 40GB SXM4"),
    "gpu_memory_gib.A100-80GB": Figure(80, "spec: NVIDIA A100 80GB SXM4"),
    "gpu_memory_gib.H100": Figure(80, "spec: NVIDIA H100 SXM5, 80 GB HBM3"),
    "gpu_memory_gib.H200": Figure(140, "spec: NVIDIA H200 SXM, 141 GB HBM3e (torch reports 140 GiB)"),
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
    "bf16_tflops.H200": Figure(
        989, "spec: NVIDIA H200 SXM datasheet, dense BF16 tensor (1979 with sparsity)"
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
    "p5en.48xlarge": ("H200", 8),
}

# torch.cuda.get_device_name() -> the GPU model of the figures above (first match wins)
DEVICE_NAMES: dict[str, str] = {
    "A10G": "A10G",
    "A100-SXM4-40GB": "A100-40GB",
    "A100-SXM4-80GB": "A100-80GB",
    "A100 80GB": "A100-80GB",
    "A100": "A100-40GB",
    "H100": "H100",
    "H200": "H200",
    "L40S": "L40S",
}


@dataclass(frozen=True)
class StepTiming:
    """Seconds of one fine-tuning micro-batch (forward, backward, optimiser step) on one GPU, measured."""

    shape: str  # a shipped shape (models/shapes), random weights
    method: str  # "lora" (any PEFT method: the base is frozen) or "fpft"
    zero_stage: int
    precision: str
    micro_batch: int
    tokens: int  # per sequence
    seconds: float
    gpu: str  # a GPU model of FIGURES
    source: str


@dataclass(frozen=True)
class BatchTiming:
    """Seconds of one circuit batch on one GPU, measured: ``attribution`` (EAP-IG, ``steps`` interpolation
    steps, ``attribute_batch``) or ``evaluation`` (one patched evaluation, ``circuit_evaluation``)."""

    core: str
    shape: str
    precision: str
    batch: int
    tokens: int
    steps: int
    seconds: float
    gpu: str
    source: str


_TRANSFER = (
    "; read as model-FLOPs utilisation, it transfers to other models, batches and GPUs by model FLOPs and "
    "dense BF16 peak: an assumption (at 1-10% utilisation, launch overhead and memory traffic weigh more)"
)
_STEPS = "measured: DeepSpeedStrategy bf16 micro-steps on one NVIDIA H200, torch 2.11 + CUDA 13 (issue 17), "
FINETUNE_TIMINGS: list[StepTiming] = [
    StepTiming("pythia-1.4b-deduped", "lora", 2, "bf16", 8, 32, 0.14, "H200",
               f"{_STEPS}pythia-1.4b-deduped shape, LoRA r=32, ZeRO-2, 8 x 32 tokens{_TRANSFER}"),
    StepTiming("pythia-1.4b-deduped", "fpft", 2, "bf16", 8, 32, 0.21, "H200",
               f"{_STEPS}pythia-1.4b-deduped shape, FPFT, ZeRO-2, 8 x 32 tokens, 33.9 GiB peak{_TRANSFER}"),
    StepTiming("opt-6.7b", "lora", 3, "bf16", 8, 32, 1.13, "H200",
               f"{_STEPS}opt-6.7b shape, LoRA r=32, ZeRO-3, 8 x 32 tokens, 15.3 GiB peak{_TRANSFER}"),
]  # fmt: skip

_EAP = (
    "measured: attribute_batch (EAP-IG, m = 5) on one NVIDIA H200, torch 2.11 + CUDA 13, random weights "
    "(issue 17's table, before the memory rewrite of attribution), "
)
CIRCUIT_TIMINGS: list[BatchTiming] = [
    BatchTiming("attribution", "pythia-1.4b-deduped", "bf16", 8, 24, 5, 0.189, "H200",
                f"{_EAP}pythia-1.4b-deduped shape, bf16, batch 8 x 24 tokens{_TRANSFER}"),
    BatchTiming("attribution", "pythia-1.4b-deduped", "bf16", 32, 24, 5, 0.337, "H200",
                f"{_EAP}pythia-1.4b-deduped shape, bf16, batch 32 x 24 tokens{_TRANSFER}"),
    BatchTiming("attribution", "gpt-neo-2.7B", "bf16", 32, 24, 5, 0.708, "H200",
                f"{_EAP}gpt-neo-2.7B shape, bf16, batch 32 x 24 tokens{_TRANSFER}"),
    BatchTiming("attribution", "tinyllama-1.1b", "bf16", 32, 24, 5, 0.364, "H200",
                f"{_EAP}tinyllama-1.1b shape, bf16, batch 32 x 24 tokens{_TRANSFER}"),
    BatchTiming("attribution", "opt-6.7b", "bf16", 8, 24, 5, 0.412, "H200",
                f"{_EAP}opt-6.7b shape, bf16, batch 8 x 24 tokens{_TRANSFER}"),
    BatchTiming("attribution", "opt-6.7b", "bf16", 16, 24, 5, 0.709, "H200",
                f"{_EAP}opt-6.7b shape, bf16, batch 16 x 24 tokens{_TRANSFER}"),
    BatchTiming("attribution", "gpt2", "fp32", 8, 16, 5, 0.091, "H200",
                f"{_EAP}gpt2 shape, fp32, batch 8 x 16 tokens{_TRANSFER}"),
]  # fmt: skip


def device_gpu(device_name: str) -> str | None:
    """Return the GPU model of the figures for ``torch.cuda.get_device_name()`` (None when unknown)."""
    return next((gpu for key, gpu in DEVICE_NAMES.items() if key in device_name), None)


def figure(name: str) -> Figure:
    """Return the figure ``name``; KeyError naming the known figures for an unknown one."""
    try:
        return FIGURES[name]
    except KeyError:
        raise KeyError(f"no figure {name!r}; known: {', '.join(sorted(FIGURES))}") from None
