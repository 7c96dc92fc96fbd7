"""The main job's schema: the study on the embedded default, and its circuit-dynamics stage."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from ftcircuits.config.data import ModelSource, PresetPath, Strict, TaskSpec, all_paper_tasks
from ftcircuits.config.training import PlainFinetuneConfig


class DynamicsStage(Strict):
    """The study's circuit-dynamics stage: a fine-tuning preset run on Ray, its circuits, their analysis."""

    finetune_config: PresetPath = Path("jobs/configs/finetune-tiny.yaml")
    circuit_overrides: list[str] = Field(
        default_factory=list, description="--set overrides for jobs.circuits --run and jobs.analyze"
    )


class StudyConfig(Strict):
    """The main job: data for every task, base accuracy, a short fine-tune, accuracy after; then
    (``dynamics``) a fine-tuning run on Ray with its circuits over checkpoints and their analysis."""

    model: ModelSource = "tiny"
    tasks: list[TaskSpec] = Field(default_factory=all_paper_tasks)
    finetune_task: TaskSpec = TaskSpec(name="addsub", range=100)
    finetune: PlainFinetuneConfig = PlainFinetuneConfig()
    out: Path = Path("runs/study")
    eval_batch_size: int = Field(256, ge=1)
    threads: int = Field(2, ge=1)
    dynamics: DynamicsStage | None = None


class MultiSeedConfig(Strict):
    """``jobs.dynamics``: the dynamics stage (fine-tune, circuits over checkpoints, analysis) for several
    fine-tuning seeds, each cached, then every headline number as mean ± std over the seeds."""

    finetune_config: PresetPath = Path("jobs/configs/finetune-tiny.yaml")
    seeds: list[int] = Field(default_factory=lambda: [42, 0, 1], description="fine-tuning seeds")
    circuit_overrides: list[str] = Field(
        default_factory=list, description="--set overrides for jobs.circuits --run and jobs.analyze"
    )
    vary_samples: bool = Field(True, description="each seed after the first: its own circuit-split sample")
    robustness: bool = Field(True, description="robustness circuits (of the base: the first seed only)")
    out: Path = Path("runs/dynamics-tiny")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be at least two distinct values, got {seeds}")
        return seeds
