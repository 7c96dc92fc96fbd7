"""The whole study in one command: data, accuracy before and after, circuits over checkpoints and their
dynamics, CircuitLoRA against LoRA, and an HTML report.

    python -m jobs.pipeline [--config FILE] [--set out=runs/pipeline] [--set circuits.discovery.examples=64]
                            [--verbose]

With no arguments it runs the embedded default (the shipped tiny model, a local Ray of its own, SQLite
MLflow in ``<out>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` names another store). One LoRA run (the
comparison's ``dynamics_arm``) gives both the accuracy after fine-tuning and the checkpoints whose circuits
are studied, and is CircuitLoRA's reference run. The report stage also finds each CircuitLoRA arm's final
circuit, which the circuit explorer sets beside the studied run's. Every stage is cached: a rerun skips
what is done.
``--set circuits.ground_truth=true`` also finds every checkpoint's circuit by exact patching (slow) and
adds the method's agreement with it to the analysis and the report (is the rewiring an artefact?).

The console shows the stage headers, one progress bar per long stage, the result tables and where the
report and MLflow store are; everything else (Ray's workers, libraries' logs) goes to ``<out>/logs/``
(``jobs.console``), and ``--verbose`` prints it as it comes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import ray
import torch

from ftcircuits.cluster.comparison import circuitlora_final_circuits, compare_methods
from ftcircuits.cluster.connection import ClusterError, check_shared_outputs, connect
from ftcircuits.cluster.run_circuits import run_circuits
from ftcircuits.cluster.train import finetune
from ftcircuits.config.comparison import CompareConfig
from ftcircuits.config.loading import ConfigError, load_config
from ftcircuits.config.pipeline import PipelineConfig
from ftcircuits.console import say
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.models.loader import load_model
from ftcircuits.models.swap import CheckpointWeights
from ftcircuits.report.figures import accuracy_bars
from ftcircuits.run_layout import read_checkpoint_index
from ftcircuits.study.accuracy import accuracy_key, cached_accuracy, circuit_split_accuracy, task_datasets
from ftcircuits.study.analysis import analyze_run, rewrite_explorer
from ftcircuits.study.comparison import arm_config
from ftcircuits.study.report import StudyOutputs, render_study_report
from ftcircuits.tracking.mlflow_runs import tracking_uri
from jobs.cli import config_parser, exit_on, exit_on_interrupt, parse_config
from jobs.console import JobLogs, job_console


def comparison_config(config: PipelineConfig, out: Path) -> CompareConfig:
    """Return the comparison the pipeline runs: its config file, under ``<out>/comparison``, with the
    pipeline's circuit settings (and rebuild) for its reference runs."""
    compare = load_config(CompareConfig, config.comparison, [f"out={out / 'comparison'}"])
    return compare.model_copy(update={"circuits": config.circuits, "rebuild": config.rebuild})


def dynamics_run_config(config: PipelineConfig, compare: CompareConfig) -> FinetuneConfig:
    """Return the FinetuneConfig of the LoRA run the study is about: the comparison's ``dynamics_arm`` at its
    first task and seed; refuse a missing or CircuitLoRA arm (planned on this very run) before any work."""
    arms = {arm.name: arm for arm in compare.arms}
    arm = arms.get(config.dynamics_arm)
    if arm is None or arm.circuitlora is not None:
        raise ConfigError(f"dynamics_arm {config.dynamics_arm!r} must name a comparison arm that is not "
                          f"CircuitLoRA; {config.comparison} has {sorted(arms)}")  # fmt: skip
    return arm_config(compare, arm, compare.tasks[0], compare.seeds[0])


def stage(title: str) -> None:
    say(f"\n== {title}")


@contextlib.contextmanager
def one_mlflow_store(out: Path) -> Iterator[str]:
    """Make every stage log to one store: ``MLFLOW_TRACKING_URI`` when set, else ``out``'s SQLite file
    (set for the stages meanwhile, and unset again after); yield its URI."""
    given = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = given or tracking_uri(out)
    try:
        yield os.environ["MLFLOW_TRACKING_URI"]
    finally:
        if given is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def main(argv: list[str] | None = None) -> None:
    args = config_parser(__doc__.splitlines()[0], console=True).parse_args(argv)
    config = parse_config(PipelineConfig, args)
    out = Path(config.out).resolve()
    with (
        job_console(out, args.verbose) as logs,
        one_mlflow_store(out) as uri,
        exit_on_interrupt(),
        exit_on(ConfigError, ClusterError, RuntimeError),
    ):
        run_study(config, out, uri, logs)


def run_study(config: PipelineConfig, out: Path, mlflow_uri: str, logs: JobLogs | None = None) -> None:
    """Run every stage of the study into ``out`` (each cached), then print where its report is (and its
    logs, ``logs``)."""
    started = time.time()
    compare = comparison_config(config, out)
    run_config = dynamics_run_config(config, compare)
    run = Path(run_config.out)
    connect()  # before any work: the cluster, its package and its storage
    if logs is not None:
        logs.note_ray()
    check_shared_outputs(out, run)
    torch.set_num_threads(config.threads)

    stage(f"data and base accuracy: {len(config.tasks)} tasks")
    loaded = load_model(run_config.model)
    datasets = task_datasets(config.tasks, loaded.tokenizer, run_config.model, out / "data")

    def measure() -> dict[str, float]:
        return circuit_split_accuracy(loaded.model, loaded.tokenizer, datasets, config.eval_batch_size,
                                      config.accuracy_examples)  # fmt: skip

    def key(model: str | Path) -> dict:
        return accuracy_key(model, datasets, config.eval_batch_size, config.accuracy_examples)

    base = cached_accuracy(out / "accuracy" / "base.json", key(loaded.source), measure)

    stage(f"fine-tuning {run_config.method.name} on {run_config.task.dataset_name()} into {run}")
    finetune(run_config)
    final = read_checkpoint_index(run).row(-1, named=True)
    CheckpointWeights(loaded).swap_to(final["path"])
    tuned = cached_accuracy(out / "accuracy" / "finetuned.json", key(final["path"]), measure)
    accuracy = {"base": base, f"{run_config.method.name}, step {final['step']}": tuned}
    accuracy_bars(
        accuracy, out / "accuracy" / "accuracy.png", f"{run_config.model}: accuracy before and after"
    )
    say(f"\n{'task (circuit split)':24s} {'base':>7s} {'tuned':>7s}")
    for name in base:
        say(f"{name:24s} {100 * base[name]:6.1f}% {100 * tuned[name]:6.1f}%")

    stage("circuits of every checkpoint (and robustness variants) on Ray actors")
    say(run_circuits(run, config.circuits, config.rebuild).describe())
    stage("circuit dynamics: similarity, faithfulness, robustness, critical layers")
    analysis = analyze_run(run, config.circuits, config.analysis)
    say(analysis.describe())

    stage("CircuitLoRA against LoRA at matched parameter counts")
    reference = {run_config.task.dataset_name(): run}
    say(compare_methods(compare.model_copy(update={"reference_runs": reference})).describe())

    stage("report")
    if config.analysis.explorer:  # the explorer sets the CircuitLoRA arms' final circuits beside the base
        finals = circuitlora_final_circuits(compare, config.circuits, config.rebuild)
        if finals:
            rewrite_explorer(analysis, run, config.circuits, finals)
    outputs = StudyOutputs(
        pipeline=config, run=run, analysis=analysis.directory, comparison=Path(compare.out),
        accuracy=accuracy, accuracy_figure=out / "accuracy" / "accuracy.png",
    )  # fmt: skip
    report = render_study_report(outputs, out / "report.html")
    ray.shutdown()  # with --verbose, its workers' last lines arrive before the summary, not after
    say(f"\nthe whole study took {(time.time() - started) / 60:.1f} min")
    say(f"report: {report}")
    say(f"MLflow: mlflow ui --backend-store-uri {mlflow_uri}")
    if logs is not None:
        say(f"logs (driver and Ray workers): {logs.directory}")


if __name__ == "__main__":
    main()
