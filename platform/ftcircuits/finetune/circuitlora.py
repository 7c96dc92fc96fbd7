"""CircuitLoRA's adapter (the paper's Algorithm 1, last step): a higher LoRA rank on critical layers.

Every targeted module of a critical layer gets rank ``critical`` and alpha ``alpha_ratio *
critical``, every other one ``other`` and ``alpha_ratio * other``, through PEFT's
``rank_pattern`` / ``alpha_pattern``; the critical adapters train at their own learning rate
through ``lr_groups``. Module names come from the architecture adapter, so every supported
architecture works the same way. Parameter counts are exact: a LoRA adapter of rank r on a
linear module with ``in`` and ``out`` features has ``r * (in + out)`` parameters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ftcircuits.models.architecture import Architecture


@dataclass(frozen=True)
class RankPair:
    """The LoRA ranks of CircuitLoRA: ``other`` layers (r_o) and ``critical`` layers (r_c)."""

    other: int
    critical: int

    def __post_init__(self) -> None:
        if self.other < 1 or self.critical < 1:
            raise ValueError(f"LoRA ranks must be >= 1, got r_o={self.other}, r_c={self.critical}")


PAPER_PAIRS = {"paper-8-32": RankPair(8, 32), "paper-16-64": RankPair(16, 64)}  # the authors' (r_o, r_c)


def layer_modules(arch: Architecture, layer: int) -> list[str]:
    """Return the full names of the modules LoRA targets in ``layer``."""
    prefix = arch.names.layer.format(i=layer)
    return [f"{prefix}.{name}" for name in arch.names.linear_modules()]


def module_widths(model: torch.nn.Module, arch: Architecture) -> dict[str, int]:
    """Return ``in + out`` features of every module LoRA targets, by full name (a meta model will do)."""
    modules = dict(model.named_modules())
    widths = {}
    for layer in range(arch.layers):
        for name in layer_modules(arch, layer):
            widths[name] = sum(modules[name].weight.shape)  # orientation-free: GPT-2's Conv1D is [in, out]
    return widths


def check_critical_layers(arch: Architecture, critical: Sequence[int]) -> None:
    """Raise ValueError unless ``critical`` is a non-empty set of distinct layers of the model."""
    bad = [layer for layer in critical if not 0 <= layer < arch.layers]
    if not critical or bad or len(set(critical)) != len(critical):
        raise ValueError(
            f"critical layers must be distinct layers in 0..{arch.layers - 1}, got {list(critical)}"
        )


def adapter_parameters(
    widths: Mapping[str, int], arch: Architecture, critical: Sequence[int], pair: RankPair
) -> int:
    """Return the trainable LoRA parameters of CircuitLoRA with ranks ``pair`` (critical layers at r_c)."""
    check_critical_layers(arch, critical)
    critical_names = {name for layer in critical for name in layer_modules(arch, layer)}
    return sum(w * (pair.critical if name in critical_names else pair.other) for name, w in widths.items())


def uniform_parameters(widths: Mapping[str, int], r: int) -> int:
    """Return the trainable LoRA parameters of plain LoRA with rank ``r`` on every targeted module."""
    return r * sum(widths.values())


def matched_rank_pair(
    widths: Mapping[str, int],
    arch: Architecture,
    critical: Sequence[int],
    r: int,
    ratio: float = 4.0,
    tolerance: float = 0.05,
) -> RankPair:
    """Return the (r_o, r_c) with r_o < r_c whose CircuitLoRA count is at most uniform rank ``r``'s
    and within ``tolerance`` of it, with r_c / r_o closest to ``ratio`` (the paper's pairs have 4);
    ties go to the larger count.

    Raises ValueError naming the parameter count when no pair matches it (for example when every layer is
    critical, or r is too small to leave room for a higher critical rank).
    """
    check_critical_layers(arch, critical)
    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    if len(critical) == arch.layers:
        raise ValueError(f"all {arch.layers} layers are critical: CircuitLoRA would be plain LoRA; lower k")
    matched = uniform_parameters(widths, r)
    best: tuple[float, int, RankPair] | None = None
    for other in range(1, r):
        for critical_rank in range(other + 1, r * arch.layers + 1):
            pair = RankPair(other, critical_rank)
            count = adapter_parameters(widths, arch, critical, pair)
            if count > matched:
                break
            if count < (1 - tolerance) * matched:
                continue
            key = (abs(math.log(critical_rank / other / ratio)), -count, pair)
            if best is None or key[:2] < best[:2]:
                best = key
    if best is None:
        raise ValueError(
            f"no (r_o, r_c) with r_o < r_c matches uniform LoRA r={r} ({matched} parameters) within "
            f"{tolerance:.0%} with {len(critical)} of {arch.layers} layers critical"
        )
    return best[2]


def rank_patterns(
    arch: Architecture, critical: Sequence[int], pair: RankPair, alpha_ratio: float = 2.0
) -> dict:
    """Return the LoRA fields of CircuitLoRA: ``r`` and ``alpha`` (every other module), and
    ``rank_pattern`` / ``alpha_pattern`` (one regex per critical layer's module, PEFT-matched)."""
    check_critical_layers(arch, critical)
    names = [name for layer in sorted(critical) for name in layer_modules(arch, layer)]
    return {
        "r": pair.other,
        "alpha": round(alpha_ratio * pair.other),
        "rank_pattern": {re.escape(name): pair.critical for name in names},
        "alpha_pattern": {re.escape(name): round(alpha_ratio * pair.critical) for name in names},
    }


def critical_lr_groups(arch: Architecture, critical: Sequence[int], lr: float) -> dict[str, float]:
    """Return ``lr_groups`` giving the critical layers' LoRA parameters learning rate ``lr``."""
    check_critical_layers(arch, critical)
    layers = "|".join(re.escape(arch.names.layer.format(i=layer)) for layer in sorted(critical))
    return {rf"(?:^|\.)(?:{layers})\..*\.lora_[AB]\.": lr}
