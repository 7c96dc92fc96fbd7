"""The method comparison: one fine-tuning config per (task, method, seed), and the table of their results.

Runs live at ``<out>/<task>/<method>/seed-<s>``; a CircuitLoRA method is planned once per task on
that task's reference run (its plan next to its seeds). Every row states the run's trainable parameters
and their share of the model, read from the run's checkpoint index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ftcircuits.config.circuitlora import CircuitLoraConfig
from ftcircuits.config.comparison import CompareConfig, MethodArm
from ftcircuits.config.loading import load_config, updated_config
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.study.circuitlora import CircuitLoraPlan, circuitlora_finetune_config
from ftcircuits.tasks.spec import TaskSpec

RESULT_COLUMNS = ("task", "method", "seed", "trainable_params", "param_share", "accuracy")


@dataclass(frozen=True)
class ComparedRun:
    """One run of the comparison: which task, method and seed, and its fine-tuning config."""

    task: str
    method: str
    seed: int
    config: FinetuneConfig

    @property
    def key(self) -> str:
        return f"{self.task}/{self.method}/seed-{self.seed}"


def arm_dir(config: CompareConfig, task: TaskSpec, arm: MethodArm) -> Path:
    return Path(config.out) / task.dataset_name() / arm.name


def arm_config(config: CompareConfig, arm: MethodArm, task: TaskSpec, seed: int) -> FinetuneConfig:
    """Return one run's config: the preset, the shared recipe, the arm's own fields, the task and seed.

    Raises ConfigError naming the arm and the bad field (validated like ``jobs.finetune``'s own config).
    """
    out = arm_dir(config, task, arm) / f"seed-{seed}"
    preset = load_config(FinetuneConfig, config.finetune_config, [f"out={out}"])
    run = {"train": {"seed": seed}, "task": task.model_dump(mode="json")}
    return updated_config(preset, config.recipe, arm.finetune, run, what=f"arm {arm.name}")


def reference_config(config: CompareConfig, task: TaskSpec) -> FinetuneConfig:
    """Return CircuitLoRA's reference run on ``task``: the reference preset on that task, run in its own
    ``out`` for its own task (so the study's LoRA run serves) and in ``<out>/<task>/reference`` for any
    other."""
    preset = load_config(FinetuneConfig, config.reference_config)
    if preset.task == task:
        return preset
    out = Path(config.out) / task.dataset_name() / "reference"
    return FinetuneConfig.model_validate(preset.model_dump() | {"task": task.model_dump(), "out": out})


def arm_circuitlora_config(config: CompareConfig, arm: MethodArm, task: TaskSpec) -> CircuitLoraConfig:
    """Return the CircuitLoRA config of a CircuitLoRA arm on ``task`` (its plan goes to the arm's dir)."""
    choices = arm.circuitlora.model_dump()
    return CircuitLoraConfig.model_validate(
        choices | {"finetune_config": config.finetune_config, "out": arm_dir(config, task, arm)}
    )


def circuitlora_run(run: ComparedRun, plan: CircuitLoraPlan, circuitlora: CircuitLoraConfig) -> ComparedRun:
    """Return ``run`` carrying CircuitLoRA's plan (ranks, alphas, learning-rate groups), in the same place."""
    tuned = circuitlora_finetune_config(run.config, plan, circuitlora)
    return ComparedRun(run.task, run.method, run.seed, tuned.model_copy(update={"out": run.config.out}))


def comparison_table(runs: list[ComparedRun]) -> pl.DataFrame:
    """Return one row per finished run: task, method, seed, trainable parameters, their share of the
    model, and the held-out accuracy at the end (with the best over checkpoints and the steps)."""
    rows = []
    for run in runs:
        index = read_checkpoint_index(run.config.out)
        last = index.row(-1, named=True)
        rows.append({
            "task": run.task, "method": run.method, "seed": run.seed,
            "trainable_params": int(last["trainable_params"]),
            "param_share": last["trainable_params"] / last["model_params"],
            "accuracy": last["eval_accuracy"], "best_accuracy": index["eval_accuracy"].max(),
            "steps": int(last["step"]),
        })  # fmt: skip
    return pl.DataFrame(rows)


def comparison_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Return mean and sample std of the final accuracy over seeds, per task and method (table order)."""
    order = {m: i for i, m in enumerate(table["method"].unique(maintain_order=True))}
    return (
        table.group_by("task", "method", maintain_order=True)
        .agg(
            pl.col("accuracy").mean().alias("mean"),
            pl.col("accuracy").std().alias("std"),
            pl.len().alias("seeds"),
            pl.col("trainable_params").first(),
            pl.col("param_share").first(),
        )
        .with_columns(pl.col("method").replace_strict(order).alias("_order"))
        .sort("task", "_order")
        .drop("_order")
    )


def summary_markdown(summary: pl.DataFrame) -> str:
    """Return the summary as a markdown table: accuracy as mean ± std (%) and the trainable parameters."""
    lines = [
        "| task | method | accuracy (mean ± std, %) | seeds | trainable params | share of model |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary.iter_rows(named=True):
        std = "n/a" if row["std"] is None else f"{100 * row['std']:.1f}"
        lines.append(
            f"| {row['task']} | {row['method']} | {100 * row['mean']:.1f} ± {std} | {row['seeds']} "
            f"| {row['trainable_params']:,} | {100 * row['param_share']:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def learned_tasks(summary: pl.DataFrame, threshold: float) -> dict[str, bool]:
    """Return, per task, whether any method's mean accuracy reaches ``threshold``."""
    best = summary.group_by("task").agg(pl.col("mean").max()).sort("task")
    return {task: value >= threshold for task, value in best.iter_rows()}
