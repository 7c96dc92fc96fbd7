"""Ray glue for fine-tuning: a TorchTrainer whose workers run ``finetune_worker`` under DeepSpeed."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ftcircuits.cluster.connection import check_shared_outputs, connect, ray_storage_path
from ftcircuits.finetune.run_identity import check_run_directory, check_run_schedule, run_record
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.finetune.worker import WorkerContext, finetune_worker, resumable_checkpoint
from ftcircuits.models.loader import load_tokenizer
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import DATA_DIR, read_run_record, run_config_path, run_finished
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import MANIFEST_FILE
from ftcircuits.tasks.spec import PERTURB_RATIOS
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run


def _quiet_train_reports() -> None:
    """Keep Ray Train's per-report INFO lines (two per checkpoint, with every metric) off the console.

    ``LoggingConfig(log_level="WARNING")`` filters the ``ray.train.*`` loggers, but the line "Reporting
    training result" comes from a logger Ray names by its file path, which that filter does not match.
    """
    from ray.train.v2._internal.execution import context

    context.logger.setLevel(logging.WARNING)


def _train_loop(payload: dict) -> None:
    import torch

    _quiet_train_reports()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(max(1, int(payload["config"].scaling.cpus_per_worker)))

    name = Path(payload["config"].out).name

    def report(metrics: dict, path: Path | None) -> None:
        if rank == 0 and "step" in metrics:  # the run's progress, one line per checkpoint
            shown = ", ".join(
                f"{k} {v:.3f}" for k, v in metrics.items() if k != "step" and isinstance(v, float)
            )
            # not print: Ray Train patches it to log too, which shows each line twice
            sys.stdout.write(f"{name}: step {metrics['step']}" + (f", {shown}\n" if shown else "\n"))
            sys.stdout.flush()
        ckpt = Checkpoint.from_directory(str(path)) if path is not None and rank == 0 else None
        ray.train.report(metrics, checkpoint=ckpt)

    # the run's own newest checkpoint (a rerun after the driver stopped, or a restart after a worker
    # failure), else the newest Ray registered: Ray restores its own record of a stopped run, but that
    # record can lag the run's index, and resuming from it would redo finished checkpoints
    own = resumable_checkpoint(payload["config"].out)
    resume = None if own is not None else ray.train.get_checkpoint()
    with resume.as_directory() if resume is not None else contextlib.nullcontext(own) as resume_dir:
        path = Path(resume_dir) if resume_dir else None
        worker = WorkerContext(rank, context.get_world_size(), report, payload["mlflow"], path)
        finetune_worker(payload["config"], payload["data_dir"], worker)


class InterruptibleTrainer(TorchTrainer):
    """A TorchTrainer whose ``fit`` leaves Ctrl-C alone: a KeyboardInterrupt, as anywhere else in a driver.

    Ray Train's own SIGINT handler (installed by ``fit`` in a driver's main thread, and never removed)
    aborts the run and then ends the driver with status 0 or 1, or, once the run is over, ends it at the
    next Ctrl-C in any later stage. The run's outputs gain nothing from it (its workers are killed either
    way; a rerun resumes from the newest checkpoint), and the driver's end stops the run's actors.
    """

    def _register_sigint_handler(self, controller) -> None:
        return None


def finetune_trainer(
    config: FinetuneConfig,
    data_dir: Path,
    mlflow_run: tuple[str, str] | None,
    max_failures: int = 2,
    callbacks: list = (),
) -> TorchTrainer:
    """Return the TorchTrainer of one fine-tuning run (``out`` absolute).

    Rank 0 logs into ``mlflow_run`` ((tracking uri, run id)), or nowhere when None (as in a Tune
    trial, where only the Tune driver writes to MLflow); ``callbacks`` are Ray Train callbacks.
    """
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker} | (
        {"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {}
    )
    return InterruptibleTrainer(
        _train_loop,
        train_loop_config={"config": config, "data_dir": Path(data_dir).resolve(), "mlflow": mlflow_run},
        scaling_config=ScalingConfig(
            num_workers=scaling.workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=Path(config.out).name,
            storage_path=ray_storage_path(config.out),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # Ray's copy serves resumption only
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),  # progress comes from our own reports
        ),
    )


def record_run(config: FinetuneConfig, data_dir: Path, mlflow_run_id: str | None) -> None:
    """Write the run's record (``finetune.json``: config, dataset, MLflow run), which later stages read;
    refuse an ``out`` that holds a run with another config first."""
    record = run_record(config, data_dir)
    check_run_directory(record)  # the same config resumes from Ray's storage; another one is refused
    with atomic_file(run_config_path(config.out)) as tmp:
        tmp.write_text(json.dumps(record | {"mlflow_run": mlflow_run_id}, indent=1))


def run_finetune(
    config: FinetuneConfig, data_dir: Path, max_failures: int = 2
) -> tuple[ray.train.Result, str]:
    """Run one fine-tuning run on Ray Train, tracked in MLflow.

    Returns Ray's result and the MLflow run id.
    """
    out = Path(config.out).resolve()
    config = config.model_copy(update={"out": out})
    check_run_directory(run_record(config, data_dir))
    uri, run_id = create_run(out, "finetune", out.name, config.model_dump(mode="json"))
    record_run(config, data_dir, run_id)
    result = finetune_trainer(config, data_dir, (uri, run_id), max_failures).fit()
    RunLogger(uri, run_id).finish("FINISHED" if result.error is None else "FAILED")
    return result, run_id


def run_dataset(config: FinetuneConfig) -> Path:
    """Return the dataset directory of a fine-tuning run (``<out>/data/<dataset>``), building it (with its
    perturbed variants) when missing; refuse an ``out`` that holds a run with another config first."""
    data_dir = Path(config.out) / DATA_DIR / config.task.dataset_name()
    check_run_directory(run_record(config, data_dir))  # before any work: another config is refused
    if not (data_dir / MANIFEST_FILE).is_file():
        tokenizer = load_tokenizer(config.model)
        make_task_dataset(config.task, tokenizer, config.model, Path(config.out) / DATA_DIR, PERTURB_RATIOS)
    return data_dir


def finetune(config: FinetuneConfig) -> str | None:
    """Build the run's dataset if needed and run it on Ray; return the MLflow
    run id. A run already finished with this config is not rerun (its recorded run id is returned); a run
    that fails raises RuntimeError."""
    data_dir = run_dataset(config)
    check_run_schedule(config, data_dir)
    if run_finished(config.out):
        print(f"fine-tuning run {config.out} is finished: reused")
        return read_run_record(config.out).get("mlflow_run")
    connect()
    check_shared_outputs(config.out)
    result, run_id = run_finetune(config, data_dir)
    if result.error is not None:
        raise RuntimeError(f"fine-tuning {config.out} failed: {result.error}")
    return run_id
