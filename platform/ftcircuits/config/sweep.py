"""The CircuitLoRA sweep's schema: the search space, the scheduler, the reference run every trial plans on."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from ftcircuits.config.data import PresetPath
from ftcircuits.config.discovery import CircuitRunSettings, RebuildOption
from ftcircuits.options import LayerVariant, SweepRanks
from ftcircuits.schema import Strict


class FloatRange(Strict):
    """A continuous search range [low, high] (log-uniform when ``log``)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"empty or inverted search range [{self.low}, {self.high}]: low must be < high")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0, got {self.low}")
        return self


class RankRange(Strict):
    """An integer search range of LoRA ranks [low, high]."""

    low: int = Field(ge=1, description="a LoRA rank: at least 1")
    high: int = Field(ge=1, description="a LoRA rank: at least 1")

    @model_validator(mode="after")
    def _ordered(self) -> RankRange:
        if not self.low < self.high:
            raise ValueError(f"empty or inverted rank range [{self.low}, {self.high}]: low must be < high")
        return self


class SweepSpace(Strict):
    """What the sweep searches. ``ranks: matched`` draws r_c / r_o from ``ratio`` and matches LoRA
    ``lora_r``'s parameter count; ``ranks: search`` draws r_o and r_c from their ranges (r_o < r_c)."""

    variant: list[LayerVariant] = Field(default_factory=lambda: ["source", "source_no_input", "destination"])
    k: list[int] = Field(default_factory=lambda: [1, 2], description="critical-layer counts to try")
    lr_critical: FloatRange = FloatRange(low=2e-3, high=1e-2, log=True)
    lr_other: FloatRange = FloatRange(low=2e-3, high=1e-2, log=True)
    ranks: SweepRanks = "matched"
    ratio: list[float] = Field(default_factory=lambda: [2.0, 4.0, 8.0], description="matched: r_c / r_o")
    r_other: RankRange | None = None
    r_critical: RankRange | None = None

    @field_validator("variant", "k", "ratio")
    @classmethod
    def _not_empty(cls, values: list) -> list:
        if not values:
            raise ValueError("an empty choice list: give at least one value")
        return values

    @field_validator("k")
    @classmethod
    def _positive_k(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks):
            raise ValueError(f"critical-layer k must be >= 1, got {ks}")
        return ks

    @model_validator(mode="after")
    def _ranks_are_searchable(self) -> SweepSpace:
        if self.ranks == "search" and (self.r_other is None or self.r_critical is None):
            raise ValueError("space.ranks 'search' needs space.r_other and space.r_critical ranges")
        if self.ranks == "matched" and any(r <= 1 for r in self.ratio):
            raise ValueError(f"space.ratio values must be > 1 (r_c above r_o), got {self.ratio}")
        return self


class SweepConfig(RebuildOption):
    """``tuning.sweep``: CircuitLoRA trials on Ray Tune (Optuna search, ASHA stopping), all planned on the
    circuits of one reference run."""

    reference_run: Path | None = Field(
        None, description="an existing fine-tuning run (else reference_config runs)"
    )
    reference_config: PresetPath = Path("jobs/configs/finetune-tiny.yaml")
    circuits: CircuitRunSettings = Field(
        CircuitRunSettings(), description="how the reference run's circuits are found"
    )
    finetune_config: PresetPath = Field(
        Path("jobs/configs/finetune-tiny.yaml"), description="the trials' preset"
    )
    lora_r: int = Field(16, ge=1, description="the uniform LoRA rank whose parameters matched ranks meet")
    space: SweepSpace = SweepSpace()
    trials: int = Field(6, ge=1)
    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers per trial (concurrency follows)")
    grace_checkpoints: int = Field(3, ge=1, description="ASHA: reports (checkpoints) before a trial may stop")
    reduction_factor: int = Field(2, ge=2)
    seed: int = 0
    out: Path = Path("runs/sweep-circuitlora-tiny")
