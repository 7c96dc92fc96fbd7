"""CircuitLoRA (the paper's Algorithm 1) end to end: probe run, its circuits, critical layers, the fine-tune.

    python -m jobs.circuitlora --config jobs/configs/circuitlora-tiny.yaml [--set critical.k=2]

Stages, each cached: the probe run (the LoRA preset, or ``probe_run``) and the circuits of its
checkpoints are reused when done; the plan (critical layers, their scores, ranks and the LoRA
config) is written to ``<out>/circuitlora.json`` and logged to MLflow; the CircuitLoRA run goes to
``<out>/finetune-<hash>``, so the same plan resumes or is done, and another gets its own run.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import polars as pl

from ftcircuits.cluster.circuit_pool import circuits_over_run
from ftcircuits.cluster.connection import ClusterError
from ftcircuits.cluster.train import connect, finetune
from ftcircuits.config.circuitlora import CircuitLoraConfig
from ftcircuits.config.discovery import CircuitRunConfig
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.config.training import FinetuneConfig
from ftcircuits.models.loader import model_skeleton
from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.study.circuitlora import (
    check_plannable,
    circuitlora_finetune_config,
    plan_circuitlora,
    write_plan,
)
from ftcircuits.study.over_run import run_inputs
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run
from jobs.cli import config_parser, exit_on, parse_config


def checked_presets(config: CircuitLoraConfig) -> tuple[FinetuneConfig, FinetuneConfig | None]:
    """Return the CircuitLoRA preset and the probe's (None for an existing probe run); check before any
    work that k fits the model and that the ranks can be matched with k critical layers."""
    preset = load_config(FinetuneConfig, config.finetune_config)
    probe = None if config.probe_run is not None else load_config(FinetuneConfig, config.probe_config)
    _, arch = model_skeleton(preset.model)
    ratios = [config.ranks.ratio] if config.ranks.choice == "matched" else []
    check_plannable(preset, config.finetune_config, [config.critical.k_for(arch.layers)], ratios,
                    config.ranks.lora_r)  # fmt: skip
    return preset, probe


def probe_stage(
    probe_run: Path | None, probe_preset: FinetuneConfig | None, circuit_overrides: list[str]
) -> tuple[Path, Path]:
    """Return the probe run (fine-tuned now from ``probe_preset`` unless given) and the directory of its
    checkpoints' circuits (computed on Ray unless already on disk): what Algorithm 1 reads."""
    probe_run = Path(probe_run or probe_preset.out).resolve()
    if probe_preset is not None:
        print(f"== probe: fine-tuning into {probe_run}")
        finetune(probe_preset)
    circuit_config = load_config(CircuitRunConfig, None, [f"run={probe_run}", "robustness=false",
                                                          *circuit_overrides])  # fmt: skip
    print(f"== circuits of every checkpoint of {probe_run}")
    with exit_on(ClusterError):
        connect()
    circuits_dir, _, computed = circuits_over_run(circuit_config)
    print(f"{computed} circuits computed: {circuits_dir}")
    return probe_run, circuits_dir


def main(argv: list[str] | None = None) -> None:
    args = config_parser(__doc__.splitlines()[0]).parse_args(argv)
    config = parse_config(CircuitLoraConfig, args)
    try:
        preset, probe_preset = checked_presets(config)
    except (ConfigError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None

    probe_run, circuits_dir = probe_stage(config.probe_run, probe_preset, config.circuit_overrides)

    plan = plan_circuitlora(config, run_inputs(probe_run).base_model, probe_run, circuits_dir)
    plan_path = write_plan(config.out, plan)
    tuned = circuitlora_finetune_config(preset, plan, config)
    share = 100 * plan.trainable_lora / plan.model_parameters
    print(f"== critical layers {plan.critical_layers} ({plan.variant}, {plan.rule}, k={plan.k}); "
          f"(r_o, r_c) = ({plan.ranks['other']}, {plan.ranks['critical']}); LoRA parameters "
          f"{plan.trainable_lora:,} ({share:.2f}% of the model) vs uniform r={config.ranks.lora_r} "
          f"{plan.trainable_lora_uniform:,}; plan: {plan_path}")  # fmt: skip

    uri, run_id = create_run(config.out, "circuitlora", Path(config.out).name,
                             config.model_dump(mode="json") | {"plan": asdict(plan)})  # fmt: skip
    logger = RunLogger(uri, run_id)
    logger.artifact(plan_path)
    try:
        finetune(tuned)
    except (RuntimeError, ValueError) as error:
        logger.finish("FAILED")
        raise SystemExit(f"error: {error}") from None
    ours, probe = read_checkpoint_index(tuned.out), read_checkpoint_index(probe_run)
    for step, accuracy in ours.select("step", "eval_accuracy").iter_rows():
        logger.metric("eval_accuracy", accuracy, step)
    logger.finish()
    table = probe.select("step", pl.col("eval_accuracy").alias("lora (probe)")).join(
        ours.select("step", pl.col("eval_accuracy").alias("circuitlora")),
        on="step",
        how="full",
        coalesce=True,
    )
    with pl.Config(tbl_rows=-1):
        print(table.sort("step"))
    print(json.dumps({"circuitlora_run": str(tuned.out), "plan": str(plan_path)}, indent=1))


if __name__ == "__main__":
    main()
