"""Device memory of circuit discovery, from the model's shape: the arithmetic that ``batch_size: auto``,
the refusal of a batch that cannot fit, ``jobs.plan`` and ``jobs.bench_gpu`` share.

Attribution (``attribution.attribute_batch``) keeps, above the weights, the floor's own activations
(the stacked forward/backward of m x B sequences) and one ``[n_sources, B, T, d]`` difference buffer
in the model's dtype; the engine's per-layer temporaries stay inside ``MEMORY_SLACK`` of those two,
which ``jobs.bench_eap`` checks. Evaluation (``evaluation.patched_logits``) runs without gradients and
keeps one source buffer in the score dtype and one layer's patched head inputs.

The floor's activations are ``layers x tokens x d_model x c`` bytes plus the all-position logits
and their gradient, with ``c`` per architecture measured on a GPU (it depends on how each
architecture's modules save tensors for the backward: GPT-Neo's float32 attention and its
gelu_new, Llama's float32 RMSNorm), each with its source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ftcircuits.circuits.graph import Graph
from ftcircuits.models.architecture import Architecture

MEMORY_SLACK = 1.1  # attribution's peak is at most this times (floor + difference buffer)
FREE_MEMORY_SHARE = 0.9  # of the device's free memory a batch may plan on (allocator fragmentation)


class BatchSizeError(ValueError):
    """An explicit circuit batch needs more memory than the device has free."""


@dataclass(frozen=True)
class FloorFigure:
    """Bytes the floor keeps per layer, token and unit of width with 2-byte activations, and its source."""

    value: float
    source: str


_H200 = "measured: floor peak on one NVIDIA H200, bf16, 24-token prompts, m = 5 (issue 17's table), less"
FLOOR_BYTES: dict[str, FloorFigure] = {
    "gpt_neox": FloorFigure(
        30.0, f"{_H200} the logits, over layers x tokens x d (pythia-1.4b, B = 8 and 32)"
    ),
    "opt": FloorFigure(24.7, f"{_H200} the logits, over layers x tokens x d (opt-6.7b, B = 8 and 16)"),
    "gpt_neo": FloorFigure(60.4, f"{_H200} the logits, over layers x tokens x d (gpt-neo-2.7B, B = 32)"),
    "llama": FloorFigure(47.4, f"{_H200} the logits, over layers x tokens x d (tinyllama-1.1b, B = 32)"),
    "gpt2": FloorFigure(
        47.4, f"{_H200} the logits, over layers x tokens x d (gpt2, fp32, 16 tokens, halved)"
    ),
}
DEFAULT_FLOOR = FloorFigure(
    34.0, "assumed: Korthikanti et al.'s 34 bytes per layer, token and width (no recomputation, 16-bit)"
)


def floor_figure(arch: Architecture) -> FloorFigure:
    """Return the floor's bytes per layer, token and width of ``arch``'s family (16-bit activations)."""
    return FLOOR_BYTES.get(arch.family, DEFAULT_FLOOR)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def floor_bytes(arch: Architecture, sequences: int, length: int, dtype: torch.dtype) -> int:
    """Return the activations of one forward/backward of ``sequences`` x ``length`` tokens to the inputs."""
    tokens, width = sequences * length, _itemsize(dtype)
    layers = arch.layers * tokens * arch.d_model * floor_figure(arch).value * width / 2
    logits = 2 * tokens * arch.vocab * width  # all-position logits and their gradient
    return int(layers + logits)


def measured_floor_figure(
    arch: Architecture, sequences: int, length: int, dtype: torch.dtype, peak: int
) -> float:
    """Return the bytes per layer, token and width (at 2-byte activations) that a measured floor ``peak`` of
    ``sequences`` x ``length`` tokens implies: the inverse of ``floor_bytes``, what ``FLOOR_BYTES`` holds."""
    tokens, width = sequences * length, _itemsize(dtype)
    logits = 2 * tokens * arch.vocab * width
    return (peak - logits) / (arch.layers * tokens * arch.d_model) * 2 / width


def difference_buffer_bytes(arch: Architecture, batch: int, length: int, dtype: torch.dtype) -> int:
    """Return the bytes of the ``[n_sources, B, T, d]`` buffer attribution keeps in the model's dtype."""
    return Graph.of(arch).n_sources * batch * length * arch.d_model * _itemsize(dtype)


@dataclass(frozen=True)
class CircuitMemory:
    """Bytes above the weights that one circuit batch needs on its device, by part."""

    batch: int
    length: int
    steps: int
    floor: int  # the floor's activations (m x B sequences)
    buffer: int  # attribution's difference buffer
    evaluation: int  # one patched evaluation pass

    @property
    def attribution(self) -> int:
        """Attribution's peak: the bound ``MEMORY_SLACK x (floor + buffer)`` that jobs.bench_eap checks."""
        return int(MEMORY_SLACK * (self.floor + self.buffer))

    @property
    def peak(self) -> int:
        return max(self.attribution, self.evaluation)


def circuit_memory(
    arch: Architecture, batch: int, length: int, steps: int, dtype: torch.dtype
) -> CircuitMemory:
    """Return the memory of attribution (``steps`` interpolation steps) and evaluation at ``batch``."""
    score = torch.promote_types(dtype, torch.float32)
    width, score_width = _itemsize(dtype), _itemsize(score)
    heads_per_projection = 3 * arch.heads if arch.names.qkv_layout != "separate" else arch.heads
    patched_heads = batch * length * heads_per_projection * arch.d_model * (score_width + 3 * width)
    logits = 2 * batch * length * arch.vocab * width
    sources = Graph.of(arch).n_sources * batch * length * arch.d_model * score_width
    return CircuitMemory(
        batch, length, steps, floor_bytes(arch, steps * batch, length, dtype),
        difference_buffer_bytes(arch, batch, length, dtype), sources + patched_heads + logits,
    )  # fmt: skip


def exact_copies(arch: Architecture, batch: int, length: int, steps: int, dtype: torch.dtype) -> int:
    """Return how many copies of a batch one exact-patching pass stacks (each copy patches one edge).

    Exact patching keeps no gradients: its copies get the memory the batch was planned for (the
    attribution bound of ``steps`` stacked steps) less its one source buffer in the score dtype, each
    copy costing one layer's forward temporaries per token (MLP hidden and its activation, a few
    residual-wide tensors, attention scores and probabilities) and its last-position logits.
    """
    score = torch.promote_types(dtype, torch.float32)
    budget = circuit_memory(arch, batch, length, steps, dtype).attribution
    budget -= Graph.of(arch).n_sources * batch * length * arch.d_model * _itemsize(score)
    per_token = 2 * arch.d_mlp + 6 * arch.d_model + 2 * arch.heads * length
    per_copy = batch * (length * per_token + 2 * arch.vocab) * _itemsize(score)
    return max(1, int(budget // per_copy))


def largest_batch(arch: Architecture, length: int, steps: int, dtype: torch.dtype, available: int) -> int:
    """Return the largest batch whose circuit memory fits ``available`` bytes (0 if not even one)."""
    per_example = circuit_memory(arch, 1, length, steps, dtype).peak  # every part is linear in the batch
    return int(available // max(per_example, 1))


def free_memory(device: torch.device | str) -> int:
    """Return the bytes free on ``device``: CUDA's free memory, or the host's available memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with Ray; a bare GPU machine may lack it
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class BatchChoice:
    """The circuit batch of a discovery, and the memory arithmetic behind it."""

    batch: int
    requested: int | str
    memory: CircuitMemory
    available: int  # bytes of the device a batch may plan on

    def describe(self) -> str:
        how = "batch_size auto picked" if self.requested == "auto" else "batch_size"
        return (
            f"{how} {self.batch} (x {self.memory.length} tokens, m = {self.memory.steps}): needs "
            f"{self.memory.peak / 2**30:.2f} GiB (attribution {self.memory.attribution / 2**30:.2f}, "
            f"evaluation {self.memory.evaluation / 2**30:.2f}) of {self.available / 2**30:.2f} GiB usable"
        )


def circuit_batch(
    arch: Architecture, requested: int | str, length: int, steps: int, dtype: torch.dtype,
    device: torch.device | str, examples: int,
) -> BatchChoice:  # fmt: skip
    """Return the batch to run: the largest that fits the device for ``"auto"`` (at most ``examples``),
    or ``requested`` when it fits; raise BatchSizeError, naming the memory it needs, when it cannot."""
    available = int(FREE_MEMORY_SHARE * free_memory(device))
    if requested == "auto":
        batch = min(largest_batch(arch, length, steps, dtype, available), examples)
        if batch < 1:
            need = circuit_memory(arch, 1, length, steps, dtype).peak
            raise BatchSizeError(
                f"batch_size auto: not even one example of {length} tokens fits: it needs "
                f"{need / 2**30:.2f} GiB above the weights, and {torch.device(device)} has "
                f"{available / 2**30:.2f} GiB usable"
            )
        return BatchChoice(batch, requested, circuit_memory(arch, batch, length, steps, dtype), available)
    batch = min(int(requested), examples)
    memory = circuit_memory(arch, batch, length, steps, dtype)
    if memory.peak > available:
        raise BatchSizeError(
            f"batch_size {batch} does not fit {torch.device(device)}: {batch} examples of {length} tokens "
            f"need {memory.peak / 2**30:.2f} GiB above the weights (attribution "
            f"{memory.attribution / 2**30:.2f}, evaluation {memory.evaluation / 2**30:.2f}), and "
            f"{available / 2**30:.2f} GiB is usable; the "
            f"largest batch that fits is {largest_batch(arch, length, steps, dtype, available)} "
            "(or set batch_size: auto)"
        )
    return BatchChoice(batch, requested, memory, available)
