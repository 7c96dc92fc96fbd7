"""``jobs.dynamics``' schema: the dynamics stage (fine-tune, circuits over checkpoints, analysis) over
several fine-tuning seeds."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from ftcircuits.config.data import PresetPath
from ftcircuits.config.discovery import AnalysisSettings, CircuitRunSettings, RebuildOption


class MultiSeedConfig(RebuildOption):
    """``jobs.dynamics``: the dynamics stage (fine-tune, circuits over checkpoints, analysis) for several
    fine-tuning seeds, each cached, then every headline number as mean ± std over the seeds. Robustness
    circuits are of the base model, so only the first seed computes them (when ``circuits.robustness``
    is enabled)."""

    finetune_config: PresetPath = Path("jobs/configs/finetune-tiny.yaml")
    seeds: list[int] = Field(default_factory=lambda: [42, 0, 1], description="fine-tuning seeds")
    circuits: CircuitRunSettings = CircuitRunSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    vary_samples: bool = Field(True, description="each seed after the first: its own circuit-split sample")
    out: Path = Path("runs/dynamics-tiny")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be at least two distinct values, got {seeds}")
        return seeds
