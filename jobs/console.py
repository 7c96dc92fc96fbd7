"""A job's console: by default only what a person reads (stage headers, one bar per long stage, results,
where the outputs are) reaches the terminal; everything else goes to ``<out>/logs/``.

Quiet (the default), the process's own stdout and stderr (file descriptors 1 and 2: libraries' logs and
warnings, Ray's driver lines, anything a native library prints) are redirected to
``<out>/logs/driver.log``, which also gets a copy of every line shown; ``ftcircuits.console.say`` and
its bars write to the terminal. Ray's workers keep their output in their own log files
(``log_to_driver=False``, see ``cluster.connection``), which are copied into ``<out>/logs/ray/`` at the end.
``--verbose`` leaves everything on the terminal as it comes, and still writes the driver log.

What the pipeline's console printed before (issue 19), and where each went:

- Ray Tune's trial table every 30 s, its configuration box and trial lines: ``verbose=0`` on the Tune
  runs under a quiet console (``cluster.comparison_trials.TUNE_VERBOSITY``); a bar of runs instead.
- every Ray worker's and actor's lines, prefixed ``(RayTrainWorker pid=...)``, among them the
  ``core_worker.cc`` "PreemptionWatcher ... max_restarts > 0" error of Ray Train's controller:
  ``log_to_driver=False`` (``cluster.connection.connect``); they stay in the session's logs, copied into
  ``<out>/logs/ray``.
- raylet's "PYTHON worker processes have been started ... the maximum expected startup concurrency"
  (Tune trials and circuit actors that ask for no CPU start more workers at once than the node has CPUs;
  Ray pushes it to the driver as an error message, not a log line): the driver log.
- transformers' "FutureWarning: `is_gradient_checkpointing` is deprecated", once per process that wraps a
  model in PEFT: PEFT reads the property; filtered for that one warning around PEFT's calls
  (``models.loader.peft_wrapping``).
- DeepSpeed's "Setting accelerator to CPU": ``DS_ACCELERATOR=cpu`` without a GPU
  (``finetune.deepspeed_strategy``); "deepspeed_shm_comm_op built successfully" (a print, no setting): in
  the worker's log.
- MLflow's "Creating initial MLflow database tables" and alembic's migration INFO lines: those loggers at
  WARNING (``tracking.mlflow_runs.quiet_store_migrations``).
- Ray's own driver lines ("Started a local Ray instance", the token-authentication warning),
  transformers' "Loading weights" bars, Tune's "View detailed results here": the driver log.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray

from ftcircuits import console

LOGS_DIR = "logs"
DRIVER_LOG = "driver.log"
RAY_LOGS_DIR = "ray"  # the Ray session's logs (workers, raylet, GCS), copied at the end


def ray_logs_dir() -> Path | None:
    """Return this node's log directory of the connected Ray session, or None without one."""
    if not ray.is_initialized():
        return None
    node = getattr(ray._private.worker, "_global_node", None)
    return Path(node.get_logs_dir_path()) if node is not None else None


def copy_ray_logs(source: Path | None, logs: Path) -> None:
    """Copy a Ray session's log directory into ``logs / RAY_LOGS_DIR`` (what is there already is
    overwritten; a rerun's session adds its own files)."""
    if source is None or not source.is_dir():
        return
    shutil.copytree(source, logs / RAY_LOGS_DIR, dirs_exist_ok=True, symlinks=True,
                    ignore_dangling_symlinks=True, ignore=shutil.ignore_patterns("*.sock"))  # fmt: skip


@dataclass
class JobLogs:
    """Where a job's logs go (``directory``), and the Ray session whose logs are copied there at the end."""

    directory: Path
    ray_session_logs: Path | None = None

    def note_ray(self) -> None:
        """Remember the connected Ray session's log directory (before a job shuts Ray down)."""
        self.ray_session_logs = ray_logs_dir() or self.ray_session_logs


class _Tee(threading.Thread):
    """Copies what is written into a pipe to the terminal and to the log (``--verbose``)."""

    def __init__(self, read_fd: int, terminal_fd: int, log) -> None:
        super().__init__(daemon=True, name="driver-log-tee")
        self.read_fd, self.terminal_fd, self.log = read_fd, terminal_fd, log

    def run(self) -> None:
        try:
            while chunk := os.read(self.read_fd, 65536):
                os.write(self.terminal_fd, chunk)
                self.log.buffer.write(chunk)
                self.log.flush()
        except (OSError, ValueError):  # the job ended: the terminal or the log is closed
            pass


@contextmanager
def job_console(out: Path, verbose: bool = False) -> Iterator[JobLogs]:
    """Run a job's body with its console (see the module); yield its logs (``<out>/logs``).

    An error that ends the job is shown on the terminal: a ``SystemExit`` message (``jobs.cli.exit_on``)
    at once, an exception's traceback by Python as it leaves (and into the driver log first)."""
    logs = Path(out).resolve() / LOGS_DIR
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / DRIVER_LOG, "a", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    sys.stderr.flush()
    saved, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    tee = None
    if verbose:
        read_fd, write_fd = os.pipe()
        tee = _Tee(read_fd, saved[0], log)
        tee.start()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
    else:
        terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8")
        errors = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        console.attach(terminal, log, errors)
    # Python's own streams onto the new descriptors too, whatever they were (a test's capture, a notebook)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
    job = JobLogs(logs)
    try:
        yield job
    except SystemExit as exit_:
        if isinstance(exit_.code, str) and not verbose:
            console.say_error(exit_.code)
            exit_.code = 1  # shown: Python would print it again, after the console
        raise
    except BaseException:
        traceback.print_exc()  # into the driver log; Python shows it on the terminal as it leaves
        raise
    finally:
        job.note_ray()
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        if tee is not None:
            tee.join(timeout=5.0)  # it ends when the pipe drains (unless a child process holds it open)
        for fd in saved:
            os.close(fd)
        if not verbose:
            console.detach()
            terminal.close()
            errors.close()
        copy_ray_logs(job.ray_session_logs, logs)
        log.close()
