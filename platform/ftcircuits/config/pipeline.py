"""The whole study's schema (``jobs.pipeline``): tasks, the method comparison whose LoRA run feeds the
circuit dynamics, the circuit and analysis settings, and where everything goes."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ftcircuits.circuits.settings import DiscoverySettings
from ftcircuits.config.data import PresetPath
from ftcircuits.config.discovery import (
    AnalysisSettings,
    CircuitRunSettings,
    RebuildOption,
    RobustnessSettings,
)
from ftcircuits.tasks.spec import TaskSpec, all_paper_tasks

PIPELINE_CIRCUITS = CircuitRunSettings(
    discovery=DiscoverySettings(examples=128, curve=True),
    robustness=RobustnessSettings(baselines=["permuted"], ratios=[0.3, 0.6, 0.9]),
)


class PipelineConfig(RebuildOption):
    """``jobs.pipeline``: data and base accuracy on every task; one LoRA run (the comparison's
    ``dynamics_arm`` at its first seed on its first task) gives the accuracy after fine-tuning and the
    checkpoints whose circuits, dynamics and critical layers are studied; CircuitLoRA against it at
    matched parameter counts; an HTML report."""

    tasks: list[TaskSpec] = Field(default_factory=all_paper_tasks, description="the accuracy table's tasks")
    comparison: PresetPath = Field(
        Path("jobs/configs/compare-pipeline.yaml"), description="a jobs.compare_methods config"
    )
    dynamics_arm: str = Field("lora", description="the comparison arm whose run's circuits are studied")
    circuits: CircuitRunSettings = Field(
        PIPELINE_CIRCUITS,
        description="how the LoRA run's circuits are found (and the comparison's reference circuits)",
    )
    analysis: AnalysisSettings = AnalysisSettings(explorer=True)
    accuracy_examples: int | None = Field(
        500,
        ge=1,
        description="the accuracy table on N items of each circuit split, drawn with seed 0 (default: all)",
    )
    eval_batch_size: int = Field(256, ge=1)
    threads: int = Field(2, ge=1)
    out: Path = Path("runs/pipeline")
