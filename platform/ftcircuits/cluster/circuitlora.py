"""CircuitLoRA (the paper's Algorithm 1) on Ray: the reference run and its circuits, the plan, the fine-tune.

Each step is cached: a finished reference run and the circuits of its checkpoints are reused; the plan
(critical layers, their scores, ranks and the LoRA config) is written to ``<out>/circuitlora.json`` and
logged to MLflow; the CircuitLoRA run goes to ``<out>/finetune-<hash>``, so the same plan resumes or is
done, and another gets its own run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from ftcircuits.cluster.run_circuits import run_circuits
from ftcircuits.cluster.train import finetune
from ftcircuits.config.circuitlora import CircuitLoraConfig
from ftcircuits.config.discovery import CircuitRunSettings
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.console import say
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.models.loader import model_skeleton
from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.study.circuitlora import (
    CircuitLoraPlan,
    check_plannable,
    circuitlora_finetune_config,
    plan_circuitlora,
    write_plan,
)
from ftcircuits.study.over_run import run_inputs
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run


@dataclass(frozen=True)
class ReferenceCircuits:
    """A reference run and the directory of its checkpoints' circuits: what Algorithm 1 reads."""

    run: Path
    circuits: Path

    @property
    def base_model(self) -> str:
        return run_inputs(self.run).base_model


def reference_circuits(
    reference_run: Path | None,
    reference_preset: FinetuneConfig | None,
    settings: CircuitRunSettings,
    rebuild: bool = False,
) -> ReferenceCircuits:
    """Return the reference run (fine-tuned now from ``reference_preset`` unless given) and its checkpoints'
    circuits under ``settings`` (computed on Ray unless already on disk; no robustness or ground-truth
    circuits)."""
    run = Path(reference_run or reference_preset.out).resolve()
    if reference_preset is not None:
        say(f"== reference run: fine-tuning into {run}")
        finetune(reference_preset)
    robustness = settings.robustness.model_copy(update={"enabled": False})
    say(f"== circuits of every checkpoint of {run}")
    plain = settings.model_copy(update={"robustness": robustness, "ground_truth": False})  # nor exact ones
    found = run_circuits(run, plain, rebuild)
    say(f"{found.computed} circuits computed: {found.directory}")
    return ReferenceCircuits(run, found.directory)


def checked_presets(config: CircuitLoraConfig) -> tuple[FinetuneConfig, FinetuneConfig | None]:
    """Return the CircuitLoRA preset and the reference run's (None for an existing reference run); check,
    before any work, that k fits the model and that the ranks can be matched with k critical layers."""
    preset = load_config(FinetuneConfig, config.finetune_config)
    reference = (
        None if config.reference_run is not None else load_config(FinetuneConfig, config.reference_config)
    )
    _, arch = model_skeleton(preset.model)
    ratios = [config.ranks.ratio] if config.ranks.choice == "matched" else []
    check_plannable(preset, config.finetune_config, [config.critical.k_for(arch.layers)], ratios,
                    config.ranks.lora_r)  # fmt: skip
    return preset, reference


@dataclass(frozen=True)
class CircuitLoraRun:
    """What ``circuitlora`` did: the plan, where it is written, the CircuitLoRA run, and both runs'
    held-out accuracy per checkpoint."""

    plan: CircuitLoraPlan
    plan_path: Path
    run: Path
    accuracy: pl.DataFrame = field(repr=False)  # step, the reference run's and CircuitLoRA's accuracy

    def describe(self, lora_r: int) -> str:
        plan = self.plan
        share = 100 * plan.params / plan.model_parameters
        lines = [
            f"== critical layers {plan.critical_layers} ({plan.variant}, {plan.rule}, k={plan.k}); "
            f"(r_o, r_c) = ({plan.ranks['other']}, {plan.ranks['critical']}); LoRA parameters "
            f"{plan.params:,} ({share:.2f}% of the model) vs uniform r={lora_r} {plan.matched_params:,}; "
            f"plan: {self.plan_path}"
        ]
        with pl.Config(tbl_rows=-1):
            lines.append(str(self.accuracy))
        lines.append(f"CircuitLoRA run: {self.run}")
        return "\n".join(lines)


def circuitlora(config: CircuitLoraConfig) -> CircuitLoraRun:
    """Run Algorithm 1 end to end: the reference run and its circuits (reused when done), the plan, and
    the CircuitLoRA fine-tune on Ray, logged to MLflow (experiment ``circuitlora``). Bad presets, k and
    ranks are refused (ConfigError) before any work; a failed fine-tune raises RuntimeError."""
    try:
        preset, reference_preset = checked_presets(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    reference = reference_circuits(config.reference_run, reference_preset, config.circuits, config.rebuild)
    plan = plan_circuitlora(config, reference.base_model, reference.run, reference.circuits)
    plan_path = write_plan(config.out, plan)
    tuned = circuitlora_finetune_config(preset, plan, config)
    uri, run_id = create_run(config.out, "circuitlora", Path(config.out).name,
                             config.model_dump(mode="json") | {"plan": asdict(plan)})  # fmt: skip
    logger = RunLogger(uri, run_id)
    logger.artifact(plan_path)
    try:
        finetune(tuned)
    except (RuntimeError, ValueError):
        logger.finish("FAILED")
        raise
    ours, theirs = read_checkpoint_index(tuned.out), read_checkpoint_index(reference.run)
    for step, accuracy in ours.select("step", "eval_accuracy").iter_rows():
        logger.metric("eval_accuracy", accuracy, step)
    logger.finish()
    table = theirs.select("step", pl.col("eval_accuracy").alias("reference run")).join(
        ours.select("step", pl.col("eval_accuracy").alias("circuitlora")),
        on="step",
        how="full",
        coalesce=True,
    )
    return CircuitLoraRun(plan, plan_path, Path(tuned.out), table.sort("step"))
