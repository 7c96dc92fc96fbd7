"""The whole study's schema (``jobs.pipeline``): tasks, the method comparison whose LoRA run feeds the
circuit dynamics, the circuit settings, and where everything goes."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ftcircuits.config.data import PresetPath, Strict, TaskSpec, all_paper_tasks


class PipelineConfig(Strict):
    """``jobs.pipeline``: data and base accuracy on every task; one LoRA run (the comparison's
    ``dynamics_arm`` at its first seed on its first task) gives the accuracy after fine-tuning and the
    checkpoints whose circuits, dynamics and critical layers are studied; CircuitLoRA against it at a
    matched budget; an HTML report."""

    tasks: list[TaskSpec] = Field(default_factory=all_paper_tasks, description="the accuracy table's tasks")
    comparison: PresetPath = Field(
        Path("jobs/configs/compare-pipeline.yaml"), description="a jobs.compare_methods config"
    )
    dynamics_arm: str = Field("lora", description="the comparison arm whose run's circuits are studied")
    circuit_overrides: list[str] = Field(
        default_factory=lambda: ["examples=128", "baselines=[permuted]", "robustness_ratios=[0.3, 0.6, 0.9]"],
        description="--set overrides of jobs.circuits --run and jobs.analyze (and the CircuitLoRA probe)",
    )
    accuracy_examples: int | None = Field(
        500,
        ge=1,
        description="the accuracy table on N items of each circuit split, drawn with seed 0 (default: all)",
    )
    eval_batch_size: int = Field(256, ge=1)
    threads: int = Field(2, ge=1)
    out: Path = Path("runs/pipeline")
