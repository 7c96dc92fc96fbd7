"""GPU time from measured timings: the model FLOPs of each core per token, and a measured timing read as
model-FLOPs utilisation (MFU), so that it carries to another model, batch or GPU by FLOPs and dense BF16
peak (an assumption each timing's source states).

Model FLOPs per token (N parameters, E edges of the circuit graph, width d, m interpolation steps):
- fine-tuning: 6N with every weight trained (forward, input and weight gradients); 4N under PEFT (the
  frozen weights get no weight gradient; the adapters' FLOPs are left out);
- attribution: (2 + 2m) 2N + m 2Ed: two forwards, m stacked forward/backward passes, and per step every
  edge's product of its source's difference with its destination's gradient;
- evaluation: 8N + 2Ed: full, empty and corrupted forwards and one patched forward, which mixes every
  edge's source into its destination.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ftcircuits.circuits.graph import Graph
from ftcircuits.models.architecture import describe_architecture
from ftcircuits.models.shapes import build_same_shape
from ftcircuits.sizing.plan_figures import CIRCUIT_TIMINGS, FINETUNE_TIMINGS, BatchTiming, StepTiming, figure


@dataclass(frozen=True)
class ShapeCounts:
    """What the FLOPs of a shipped shape depend on."""

    parameters: int
    edges: int
    d_model: int


@cache
def shape_counts(name: str) -> ShapeCounts:
    """Return the parameters, circuit edges and width of the shipped shape ``name`` (built on meta)."""
    model = build_same_shape(name, device="meta")
    arch = describe_architecture(model.config)
    return ShapeCounts(sum(p.numel() for p in model.parameters()), Graph.of(arch).n_edges, arch.d_model)


def finetune_kind(method: str) -> str:
    """Return ``"fpft"`` for full fine-tuning, ``"lora"`` for any PEFT method (a frozen base)."""
    return "fpft" if method == "fpft" else "lora"


def finetune_flops_per_token(method: str, parameters: int) -> int:
    """Return the model FLOPs of one trained token: 6N for FPFT, 4N under PEFT."""
    return (6 if finetune_kind(method) == "fpft" else 4) * parameters


def attribution_flops_per_token(parameters: int, edges: int, d_model: int, steps: int) -> int:
    """Return the model FLOPs of EAP-IG per token: (2 + 2m) 2N + m 2Ed."""
    return (2 + 2 * steps) * 2 * parameters + steps * 2 * edges * d_model


def evaluation_flops_per_token(parameters: int, edges: int, d_model: int) -> int:
    """Return the model FLOPs of one patched circuit evaluation per token: 8N + 2Ed."""
    return 8 * parameters + 2 * edges * d_model


def peak_flops(gpu: str) -> float:
    """Return the dense BF16 peak of ``gpu`` in FLOP/s."""
    return figure(f"bf16_tflops.{gpu}").value * 1e12


@dataclass(frozen=True)
class Throughput:
    """A measured timing read as MFU, and how it was chosen for the model it sizes."""

    mfu: float
    measured: str  # what ran and how long it took
    choice: str  # "the same shape and setting", or what differs from the model sized
    source: str

    def seconds(self, flops: float, gpu: str) -> float:
        """Return the seconds ``flops`` model FLOPs take on ``gpu`` at this MFU."""
        return flops / (self.mfu * peak_flops(gpu))


def step_mfu(timing: StepTiming) -> float:
    """Return the MFU of a measured fine-tuning micro-batch."""
    per_token = finetune_flops_per_token(timing.method, shape_counts(timing.shape).parameters)
    return timing.micro_batch * timing.tokens * per_token / (timing.seconds * peak_flops(timing.gpu))


def batch_flops(timing: BatchTiming) -> float:
    """Return the model FLOPs of a measured circuit batch."""
    counts = shape_counts(timing.shape)
    if timing.core == "attribution":
        per_token = attribution_flops_per_token(counts.parameters, counts.edges, counts.d_model, timing.steps)
    else:
        per_token = evaluation_flops_per_token(counts.parameters, counts.edges, counts.d_model)
    return timing.batch * timing.tokens * per_token


def batch_mfu(timing: BatchTiming) -> float:
    """Return the MFU of a measured circuit batch."""
    return batch_flops(timing) / (timing.seconds * peak_flops(timing.gpu))


def _choice(differences: list[str]) -> str:
    if not differences:
        return "the same shape and setting"
    return "carried over (an assumption): " + ", ".join(differences)


def finetune_throughput(
    method: str, zero_stage: int, shape: str | None, timings: list[StepTiming] = FINETUNE_TIMINGS
) -> Throughput:
    """Return the measured fine-tuning throughput that sizes ``method`` under ``zero_stage`` on ``shape``:
    the same ZeRO stage first (ZeRO-3's gathers dominate a step), then the same kind (PEFT or FPFT),
    then the same shape."""
    kind = finetune_kind(method)
    timing = min(timings, key=lambda t: (t.zero_stage != zero_stage, t.method != kind, t.shape != shape))
    differences = [
        *([f"shape {timing.shape}"] if timing.shape != shape else []),
        *([f"{timing.method}, not {kind}"] if timing.method != kind else []),
        *([f"ZeRO-{timing.zero_stage}, not ZeRO-{zero_stage}"] if timing.zero_stage != zero_stage else []),
    ]
    measured = (
        f"{timing.shape} {timing.method} ZeRO-{timing.zero_stage} {timing.precision}, "
        f"{timing.micro_batch} x {timing.tokens} tokens: {timing.seconds:g} s on {timing.gpu}"
    )
    return Throughput(step_mfu(timing), measured, _choice(differences), timing.source)


def circuit_throughput(
    core: str, shape: str | None, precision: str, batch: int, timings: list[BatchTiming] = CIRCUIT_TIMINGS
) -> Throughput:
    """Return the measured throughput of ``core`` ("attribution" or "evaluation") that sizes ``shape`` at
    ``batch``: the same shape first, then the same precision, then the nearest batch (the larger on a tie).
    With no timing of ``core``, evaluation takes attribution's (an assumption, named in ``choice``)."""
    same_core = [t for t in timings if t.core == core] or [t for t in timings if t.core == "attribution"]
    timing = min(
        same_core,
        key=lambda t: (t.shape != shape, t.precision != precision, abs(t.batch - batch), -t.batch),
    )
    differences = [
        *([f"attribution's MFU (no {core} timing yet)"] if timing.core != core else []),
        *([f"shape {timing.shape}"] if timing.shape != shape else []),
        *([f"{timing.precision}, not {precision}"] if timing.precision != precision else []),
        *([f"batch {timing.batch}, not {batch}"] if timing.batch != batch else []),
    ]
    measured = (
        f"{timing.core} of {timing.shape} {timing.precision}, batch {timing.batch} x {timing.tokens} tokens, "
        f"m = {timing.steps}: {timing.seconds:g} s on {timing.gpu}"
    )
    return Throughput(batch_mfu(timing), measured, _choice(differences), timing.source)
