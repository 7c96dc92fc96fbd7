"""Ray glue for fine-tuning: a TorchTrainer whose workers run ``finetune_worker`` under DeepSpeed."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ftcircuits.cluster.connection import check_shared_outputs, connect, ray_storage_path
from ftcircuits.console import progress, say
from ftcircuits.finetune.run_identity import check_run_directory, check_run_schedule, run_record, run_steps
from ftcircuits.finetune.settings import FinetuneConfig
from ftcircuits.finetune.worker import WorkerContext, finetune_worker, resumable_checkpoint
from ftcircuits.models.loader import load_tokenizer
from ftcircuits.paths import atomic_file
from ftcircuits.run_layout import DATA_DIR, PROGRESS_FILE, read_run_record, run_config_path, run_finished
from ftcircuits.tasks.dataset import make_task_dataset
from ftcircuits.tasks.io import MANIFEST_FILE, read_items, read_manifest
from ftcircuits.tasks.spec import PERTURB_RATIOS
from ftcircuits.tracking.mlflow_runs import RunLogger, create_run


def _quiet_train_reports() -> None:
    """Keep Ray Train's per-report INFO lines (two per checkpoint, with every metric) off the console.

    ``LoggingConfig(log_level="WARNING")`` filters the ``ray.train.*`` loggers, but the line "Reporting
    training result" comes from a logger Ray names by its file path, which that filter does not match.
    """
    from ray.train.v2._internal.execution import context

    context.logger.setLevel(logging.WARNING)


PROGRESS_INTERVAL_S = 2.0  # rank 0 writes its progress file at most this often (and at each checkpoint)
WATCH_INTERVAL_S = 1.0  # the driver reads it this often


class ProgressFile:
    """Rank 0's newest step, training loss and held-out accuracy in ``<out>/progress.json``: written at
    most every PROGRESS_INTERVAL_S and at each checkpoint; the driver's bar reads it (``watch_progress``)."""

    def __init__(self, out: Path) -> None:
        self.path, self.latest, self.written = Path(out) / PROGRESS_FILE, {}, 0.0

    def update(self, force: bool = False, **values: float) -> None:
        self.latest |= values
        if force or time.monotonic() - self.written >= PROGRESS_INTERVAL_S:
            with atomic_file(self.path) as tmp:
                tmp.write_text(json.dumps(self.latest))
            self.written = time.monotonic()


def read_progress(out: Path) -> dict:
    """Return a run's progress file (``ProgressFile``), or {} when there is none (yet) or it is unreadable."""
    try:
        return json.loads((Path(out) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def watch_progress(out: Path, total: int, desc: str) -> Iterator[None]:
    """Show a bar of a run's steps (``total``) with its newest loss and held-out accuracy while the body
    runs, read from rank 0's progress file by a thread of the driver."""
    bar = progress(total, desc, "step")
    done = threading.Event()

    def show() -> None:
        latest = read_progress(out)
        step = min(int(latest.get("step", 0)), total)
        parts = [f"{name.replace('_', ' ')} {latest[name]:.3f}" for name in ("train_loss", "eval_accuracy")
                 if isinstance(latest.get(name), float) and not math.isnan(latest[name])]  # fmt: skip
        if parts:
            bar.set_postfix_str(", ".join(parts))
        if step > bar.n:
            bar.update(step - bar.n)

    def watch() -> None:
        while not done.wait(WATCH_INTERVAL_S):
            show()

    watcher = threading.Thread(target=watch, daemon=True, name="finetune-progress")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        show()
        bar.close()


def _train_loop(payload: dict) -> None:
    import torch

    _quiet_train_reports()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(max(1, int(payload["config"].scaling.cpus_per_worker)))

    name = Path(payload["config"].out).name
    tracker = ProgressFile(payload["config"].out) if rank == 0 else None

    def on_step(step: int, loss: float) -> None:
        if tracker is not None:
            tracker.update(step=step, train_loss=loss)

    def report(metrics: dict, path: Path | None) -> None:
        if tracker is not None and "step" in metrics:
            accuracy = {"eval_accuracy": metrics["eval_accuracy"]} if "eval_accuracy" in metrics else {}
            tracker.update(force=True, step=metrics["step"], **accuracy)
        if rank == 0 and "step" in metrics:  # the run's progress, one line per checkpoint (its worker log)
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
        worker = WorkerContext(rank, context.get_world_size(), report, on_step, payload["mlflow"], path)
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
    uri, run_id = create_run(out, "finetune", out.name, config.model_dump(mode="json"), "finetune")
    RunLogger(uri, run_id).dataset(data_dir, read_manifest(data_dir))  # before rank 0 logs into the run
    record_run(config, data_dir, run_id)
    with watch_progress(out, run_steps(config, data_dir), "fine-tuning"):
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
    read_items(data_dir)  # checked here: a damaged file stops the run before Ray starts, not in a worker
    return data_dir


def finetune(config: FinetuneConfig) -> str | None:
    """Build the run's dataset if needed and run it on Ray; return the MLflow
    run id. A run already finished with this config is not rerun (its recorded run id is returned); a run
    that fails raises RuntimeError."""
    data_dir = run_dataset(config)
    check_run_schedule(config, data_dir)
    if run_finished(config.out):
        say(f"fine-tuning run {config.out} is finished: reused")
        return read_run_record(config.out).get("mlflow_run")
    connect()
    check_shared_outputs(config.out)
    result, run_id = run_finetune(config, data_dir)
    if result.error is not None:
        raise RuntimeError(f"fine-tuning {config.out} failed: {result.error}")
    return run_id
