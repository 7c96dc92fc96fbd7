"""The method comparison's schema: the runs' preset and recipe, the tasks, seeds and compared methods."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from ftcircuits.config.circuitlora import CriticalLayerRule, RankSettings
from ftcircuits.config.data import PresetPath
from ftcircuits.config.discovery import CircuitRunSettings, RebuildOption
from ftcircuits.schema import Strict
from ftcircuits.tasks.spec import TaskSpec


class CircuitLoraArm(Strict):
    """CircuitLoRA's choices, planned on each task's reference run (Algorithm 1 per task)."""

    critical: CriticalLayerRule = CriticalLayerRule()
    ranks: RankSettings = RankSettings()
    lr_critical: float = Field(5e-3, gt=0)
    lr_other: float = Field(5e-3, gt=0)


class MethodArm(Strict):
    """One compared method: the runs' preset updated by ``finetune``, and CircuitLoRA's plan when given."""

    name: str = Field(description="the method's label in tables and run directories")
    finetune: dict[str, Any] = Field(
        default_factory=dict,
        description="a partial fine-tuning config over the preset, e.g. {method: {name: ia3}, "
        "train: {lr: 0.01}}",
    )
    circuitlora: CircuitLoraArm | None = None

    @field_validator("name")
    @classmethod
    def _file_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"arm name {name!r} must be a file name (letters, digits, '.', '_', '-')")
        return name


class CompareConfig(RebuildOption):
    """``jobs.compare_methods``: every arm on every task over several seeds, one table with spreads."""

    finetune_config: PresetPath = Field(
        Path("jobs/configs/finetune-tiny.yaml"), description="the runs' preset (a LoRA method)"
    )
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="a partial fine-tuning config every run shares (schedule, workers, ...), e.g. "
        "{train: {checkpoint_every: 100}}",
    )
    reference_config: PresetPath = Field(
        Path("jobs/configs/finetune-tiny.yaml"),
        description="CircuitLoRA's reference run on each task: this preset on the task (its own out for its "
        "task)",
    )
    reference_runs: dict[str, Path] = Field(
        default_factory=dict, description="task (dataset name, e.g. addsub-100) -> an existing reference run"
    )
    circuits: CircuitRunSettings = Field(
        CircuitRunSettings(), description="how the reference runs' circuits are found"
    )
    tasks: list[TaskSpec] = Field(default_factory=lambda: [TaskSpec(name="addsub", range=100)])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    arms: list[MethodArm]
    learned_at: float = Field(0.3, gt=0, le=1, description="a task is learned at this accuracy or more")
    out: Path = Path("runs/compare-tiny")

    @model_validator(mode="after")
    def _distinct(self) -> CompareConfig:
        for what, values in (
            ("arm names", [arm.name for arm in self.arms]),
            ("seeds", self.seeds),
            ("tasks", [task.dataset_name() for task in self.tasks]),
        ):
            if not values:
                raise ValueError(f"no {what}: give at least one")
            repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
            if repeated:
                raise ValueError(f"{what} repeat: {repeated}")
        unknown = set(self.reference_runs) - {task.dataset_name() for task in self.tasks}
        if unknown:
            raise ValueError(f"reference_runs name tasks not compared: {sorted(unknown)}")
        return self
