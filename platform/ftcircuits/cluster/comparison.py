"""The method comparison stage: LoRA, CircuitLoRA, AdaLoRA, IA3 and FPFT over tasks and seeds on Ray Tune.

Every (task, method, seed) is one Ray Train run, fitted as a Tune trial, as many at a time as the cluster
holds; finished runs are reused, so running it again resumes. CircuitLoRA methods are planned on each
task's reference run (fine-tuned and its circuits found first, or reused). Outputs in ``out``:
``comparison.parquet`` (one row per run), ``comparison.md`` (mean ± std per task and method),
``learned.json``, ``comparison.png``, and MLflow: a parent run per task (mean and std per method, the
files above), a child run per (method, seed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from ftcircuits.cluster.circuitlora import reference_circuits
from ftcircuits.cluster.comparison_trials import ComparisonRuns, run_comparison
from ftcircuits.cluster.connection import check_shared_outputs, connect
from ftcircuits.cluster.run_circuits import final_checkpoint_circuit
from ftcircuits.config.comparison import CompareConfig
from ftcircuits.config.discovery import CircuitRunSettings
from ftcircuits.config.loading import ConfigError
from ftcircuits.console import progress, say
from ftcircuits.finetune.run_identity import check_run_schedule
from ftcircuits.integrity import DamagedFileError
from ftcircuits.models.loader import load_tokenizer, model_skeleton
from ftcircuits.paths import atomic_file
from ftcircuits.report.figures import method_comparison
from ftcircuits.run_layout import run_finished
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
    reference_config,
    summary_markdown,
)
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import MANIFEST_FILE, read_items
from ftcircuits.tasks.spec import TaskSpec


def planned_runs(config: CompareConfig) -> list[ComparedRun]:
    """Return every run's config, CircuitLoRA ones not yet planned; refuse (ConfigError, ValueError), before
    any work, a bad arm field, and a CircuitLoRA arm whose k or ranks the model cannot have."""
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
        if task.dataset_name() not in config.reference_runs:
            reference_config(config, task)  # the reference preset loads on this task
    return runs


def with_circuitlora_plans(config: CompareConfig, runs: list[ComparedRun]) -> list[ComparedRun]:
    """Return ``runs`` with each CircuitLoRA arm planned on its task's reference run (run first if needed)."""
    arms = {arm.name: arm for arm in config.arms if arm.circuitlora is not None}
    tasks = {task.dataset_name(): task for task in config.tasks}
    planned = {}
    for name in sorted({run.task for run in runs if run.method in arms}):
        given = config.reference_runs.get(name)
        preset = None if given is not None else reference_config(config, tasks[name])
        reference = reference_circuits(given, preset, config.circuits, config.rebuild)
        for arm in arms.values():
            circuitlora = arm_circuitlora_config(config, arm, tasks[name])
            plan = plan_circuitlora(circuitlora, reference.base_model, reference.run, reference.circuits)
            write_plan(arm_dir(config, tasks[name], arm), plan)
            pair = f"({plan.ranks['other']}, {plan.ranks['critical']})"
            say(f"== {name} {arm.name}: critical layers {plan.critical_layers} ({plan.variant}), "
                f"(r_o, r_c) = {pair}, {plan.params:,} LoRA parameters vs {plan.matched_params:,} "
                "uniform")  # fmt: skip
            planned[name, arm.name] = (plan, circuitlora)
    return [circuitlora_run(run, *planned[run.task, run.method]) if run.method in arms else run
            for run in runs]  # fmt: skip


def task_datasets(config: CompareConfig, tasks: list[TaskSpec], model: str) -> dict[str, Path]:
    """Return each task's dataset directory (``<out>/data/<task>``), built once for all its runs, and
    checked here (DamagedFileError) rather than in a trial."""
    tokenizer, dirs = load_tokenizer(model), {}
    for task in tasks:
        directory = Path(config.out).resolve() / "data" / task.dataset_name()
        if not (directory / MANIFEST_FILE).is_file():
            make_task_dataset(task, tokenizer, model, directory.parent)
        read_items(directory)
        dirs[task.dataset_name()] = directory
    return dirs


@dataclass(frozen=True)
class Comparison:
    """The comparison's results: one row per run, mean ± std per task and method, where they are written."""

    table: pl.DataFrame = field(repr=False)
    markdown: str
    out: Path
    figure: Path
    mlflow_uri: str
    mlflow_path: str = ""  # the MLflow UI's path of the comparison's runs, charted

    def describe(self) -> str:
        """Return the summary (mean ± std per task and method) and where the per-run table, figure and
        MLflow runs are."""
        ui = f" (in `mlflow ui`: {self.mlflow_path})" if self.mlflow_path else ""
        return (f"{self.markdown}\ntable: {self.out / 'comparison.parquet'}; figure: {self.figure}; "
                f"MLflow: {self.mlflow_uri}{ui}")  # fmt: skip


def compare_methods(config: CompareConfig) -> Comparison:
    """Fit every (task, method, seed) run on Ray Tune (finished runs reused), planning CircuitLoRA arms on
    their reference runs first; write the table, summary, learned tasks and figure to ``config.out``.

    Bad arms, k, ranks and schedules are refused (ConfigError) before any work; RuntimeError when runs
    fail; ClusterError when the cluster cannot hold the outputs."""
    config = config.model_copy(update={"out": Path(config.out).resolve()})  # trials chdir
    try:
        runs = planned_runs(config)
    except DamagedFileError:
        raise  # a damaged input file: exit status 2, as is
    except ValueError as error:  # ConfigError included
        raise ConfigError(str(error)) from None
    sizes = f"{len(config.tasks)} tasks x {len(config.arms)} methods x {len(config.seeds)} seeds"
    say(f"== {len(runs)} runs: {sizes}")
    data_dirs = task_datasets(config, config.tasks, runs[0].config.model)
    for run in runs:
        try:
            check_run_schedule(run.config, data_dirs[run.task])
        except DamagedFileError:
            raise
        except ValueError as error:
            raise ConfigError(f"{run.key}: {error}") from None
    connect()
    check_shared_outputs(config.out)
    runs = with_circuitlora_plans(config, runs)
    mlflow = ComparisonRuns(config.out, {run.key: run for run in runs}, data_dirs)
    results = run_comparison(runs, data_dirs, config.out, [mlflow])
    failed = [result.error for result in results if result.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed; first: {failed[0]}")
    unfinished = [run.key for run in runs if not run_finished(run.config.out)]
    if unfinished:  # a stopped experiment returns its unfinished trials without an error
        raise RuntimeError(f"{len(unfinished)} runs did not finish ({', '.join(unfinished)}): run the "
                           "comparison again to resume them")  # fmt: skip
    comparison = write_comparison(config, runs, mlflow.uri)
    mlflow.log_summary(comparison_summary(comparison.table), config.out)
    return replace(comparison, mlflow_path=mlflow.ui_path())


def write_comparison(config: CompareConfig, runs: list[ComparedRun], mlflow_uri: str) -> Comparison:
    """Write the finished runs' table, summary markdown, learned tasks and figure; return them."""
    table = comparison_table(runs)
    summary = comparison_summary(table)
    with atomic_file(config.out / "comparison.parquet") as tmp:
        table.write_parquet(tmp)
    learned = learned_tasks(summary, config.learned_at)
    markdown = summary_markdown(summary) + "\n" + "\n".join(
        f"- {task}: {'learns' if ok else 'does not learn'} (best method mean "
        f"{'>=' if ok else '<'} {100 * config.learned_at:.0f}%)" for task, ok in learned.items()
    ) + "\n"  # fmt: skip
    with atomic_file(config.out / "comparison.md") as tmp:
        tmp.write_text(markdown)
    with atomic_file(config.out / "learned.json") as tmp:
        tmp.write_text(json.dumps(learned, indent=1))
    figure = method_comparison(table, config.out / "comparison.png", f"{len(config.seeds)} seeds")
    return Comparison(table, markdown, config.out, figure, mlflow_uri)


def circuitlora_final_circuits(
    config: CompareConfig, settings: CircuitRunSettings, rebuild: bool = False
) -> dict[str, Path]:
    """Return ``"<arm>, step N"`` -> circuit file stem of each CircuitLoRA arm's final checkpoint at the
    first task and seed (the pipeline's studied ones), found under ``settings``' discovery unless on disk
    (``run_circuits.final_checkpoint_circuit``), with one progress bar: what the explorer sets beside the
    studied run's base."""
    task, seed = config.tasks[0], config.seeds[0]
    arms = [arm for arm in config.arms if arm.circuitlora is not None]
    finals = {}
    with progress(len(arms), "CircuitLoRA's final circuits", "circuit", disable=not arms) as bar:
        for arm in arms:

            def on_result(row: dict, arm: str = arm.name) -> None:
                bar.set_postfix_str(f"{arm} step {row['step']} faithfulness {row['faithfulness']:.2f}",
                                    refresh=False)  # fmt: skip
                bar.update(1)

            run = Path(arm_config(config, arm, task, seed).out)
            step, stem = final_checkpoint_circuit(run, settings, rebuild, on_result)
            finals[f"{arm.name}, step {step}"] = stem
    return finals
