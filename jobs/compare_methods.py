"""Compare fine-tuning methods (LoRA, CircuitLoRA, AdaLoRA, IA3, FPFT) over tasks and seeds, on Ray Tune.

    python -m jobs.compare_methods --config jobs/configs/compare-tiny.yaml [--set seeds=[0]]

Every (task, method, seed) is one Ray Train run, fitted as a Tune trial, as many at a time as the
cluster holds; finished runs are reused, so a rerun resumes. CircuitLoRA methods are planned on each
task's probe run (fine-tuned and its circuits found first, or reused). Outputs in ``out``:
``comparison.parquet`` (one row per run), ``comparison.md`` (mean ± std per task and method),
``comparison.png``, and MLflow: a parent run per task, a child run per (method, seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ftcircuits.cluster.connection import ClusterError, check_shared_outputs
from ftcircuits.cluster.train import connect
from ftcircuits.config.comparison import CompareConfig
from ftcircuits.config.data import TaskSpec
from ftcircuits.config.loading import ConfigError
from ftcircuits.finetune.run_identity import check_run_schedule
from ftcircuits.models.loader import load_tokenizer, model_skeleton
from ftcircuits.paths import atomic_file
from ftcircuits.report.figures import method_comparison
from ftcircuits.study.circuitlora import check_plannable, plan_circuitlora, write_plan
from ftcircuits.study.comparison import (
    ComparedRun,
    arm_circuitlora_config,
    arm_config,
    arm_dir,
    circuitlora_run,
    comparison_summary,
    comparison_table,
    learned_tasks,
    probe_config,
    summary_markdown,
)
from ftcircuits.study.over_run import run_inputs
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import MANIFEST_FILE
from jobs.circuitlora import probe_stage
from jobs.cli import config_parser, exit_on, parse_config
from tuning.compare import ComparisonRuns, run_comparison


def planned_runs(config: CompareConfig) -> list[ComparedRun]:
    """Return every run's config, CircuitLoRA ones not yet planned; refuse, before any work, a bad
    override, and a CircuitLoRA arm whose k or budget the model cannot have."""
    runs = []
    for task in config.tasks:
        for arm in config.arms:
            for seed in config.seeds:
                run = ComparedRun(task.dataset_name(), arm.name, seed, arm_config(config, arm, task, seed))
                runs.append(run)
            if arm.circuitlora is not None:
                preset, choices = runs[-1].config, arm.circuitlora
                layers = model_skeleton(preset.model)[1].layers
                ratios = [choices.ranks.ratio] if choices.ranks.choice == "matched" else []
                check_plannable(preset, config.finetune_config, [choices.critical.k_for(layers)], ratios,
                                choices.ranks.lora_r, k_name=f"arm {arm.name}: critical k")  # fmt: skip
        if task.dataset_name() not in config.probe_runs:
            probe_config(config, task)  # the probe's preset loads on this task
    return runs


def with_circuitlora_plans(config: CompareConfig, runs: list[ComparedRun]) -> list[ComparedRun]:
    """Return ``runs`` with each CircuitLoRA arm planned on its task's probe (probes run first if needed)."""
    arms = {arm.name: arm for arm in config.arms if arm.circuitlora is not None}
    tasks = {task.dataset_name(): task for task in config.tasks}
    planned = {}
    for name in sorted({run.task for run in runs if run.method in arms}):
        given = config.probe_runs.get(name)
        probe = None if given is not None else probe_config(config, tasks[name])
        probe_run, circuits_dir = probe_stage(given, probe, config.circuit_overrides)
        for arm in arms.values():
            circuitlora = arm_circuitlora_config(config, arm, tasks[name])
            plan = plan_circuitlora(circuitlora, run_inputs(probe_run).base_model, probe_run, circuits_dir)
            write_plan(arm_dir(config, tasks[name], arm), plan)
            pair = f"({plan.ranks['other']}, {plan.ranks['critical']})"
            print(f"== {name} {arm.name}: critical layers {plan.critical_layers} ({plan.variant}), "
                  f"(r_o, r_c) = {pair}, {plan.trainable_lora:,} LoRA parameters vs "
                  f"{plan.trainable_lora_uniform:,} uniform")  # fmt: skip
            planned[name, arm.name] = (plan, circuitlora)
    return [circuitlora_run(run, *planned[run.task, run.method]) if run.method in arms else run
            for run in runs]  # fmt: skip


def task_datasets(config: CompareConfig, tasks: list[TaskSpec], model: str) -> dict[str, Path]:
    """Return each task's dataset directory (``<out>/data/<task>``), built once for all its runs."""
    tokenizer, dirs = load_tokenizer(model), {}
    for task in tasks:
        directory = Path(config.out).resolve() / "data" / task.dataset_name()
        if not (directory / MANIFEST_FILE).is_file():
            make_task_dataset(task, tokenizer, model, directory.parent)
        dirs[task.dataset_name()] = directory
    return dirs


def main(argv: list[str] | None = None) -> None:
    config = parse_config(CompareConfig, config_parser(__doc__.splitlines()[0]).parse_args(argv))
    config = config.model_copy(update={"out": Path(config.out).resolve()})  # trials chdir
    try:
        runs = planned_runs(config)
    except (ConfigError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    sizes = f"{len(config.tasks)} tasks x {len(config.arms)} methods x {len(config.seeds)} seeds"
    print(f"== {len(runs)} runs: {sizes}")
    data_dirs = task_datasets(config, config.tasks, runs[0].config.model)
    try:
        for run in runs:
            check_run_schedule(run.config, data_dirs[run.task])
    except ValueError as error:
        raise SystemExit(f"error: {run.key}: {error}") from None
    with exit_on(ClusterError):
        connect()
        check_shared_outputs(config.out)
    runs = with_circuitlora_plans(config, runs)
    mlflow = ComparisonRuns(config.out, {run.key: run for run in runs}, list(data_dirs))
    results = run_comparison(runs, data_dirs, config.out, [mlflow])
    failed = [result.error for result in results if result.error is not None]
    if failed:
        raise SystemExit(f"error: {len(failed)} runs failed; first: {failed[0]}")

    table = comparison_table(runs)
    summary = comparison_summary(table)
    with atomic_file(config.out / "comparison.parquet") as tmp:
        table.write_parquet(tmp)
    markdown = summary_markdown(summary)
    learned = learned_tasks(summary, config.learned_at)
    markdown += "\n" + "\n".join(
        f"- {task}: {'learns' if ok else 'does not learn'} (best method mean "
        f"{'>=' if ok else '<'} {100 * config.learned_at:.0f}%)" for task, ok in learned.items()
    ) + "\n"  # fmt: skip
    with atomic_file(config.out / "comparison.md") as tmp:
        tmp.write_text(markdown)
    with atomic_file(config.out / "learned.json") as tmp:
        tmp.write_text(json.dumps(learned, indent=1))
    figure = method_comparison(table, config.out / "comparison.png", f"{len(config.seeds)} seeds")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200):
        print(table)
    print(markdown)
    print(f"table: {config.out / 'comparison.parquet'}; figure: {figure}; MLflow: {mlflow.uri}")


if __name__ == "__main__":
    main()
