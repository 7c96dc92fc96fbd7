"""The pipeline's driver interrupted in each of its stages (SIGINT, as Ctrl-C; SIGKILL), then rerun: nothing
finished is redone (the files of finished checkpoints, circuits and accuracy tables keep their mtimes),
nothing half-written is used, and the last rerun completes the study.

Each driver is ``python -m jobs.pipeline`` in a session of its own that joins the test session's Ray
cluster through ``RAY_ADDRESS`` (as a job joins a running cluster), which outlives each driver and ends
the actors and Ray Train runs of a killed one. (A driver with a local Ray of its own would start one per
rerun, which a loaded machine does not always finish within Ray's 30 s.) Whatever process outlives a
driver is killed here, by the PIDs seen under it.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import psutil
import pytest

from ftcircuits.circuits.io import EDGES_SUFFIX
from ftcircuits.finetune.deepspeed_strategy import DeepSpeedStrategy
from ftcircuits.run_layout import CHECKPOINTS_DIR, INDEX_FILE
from jobs.cli import INTERRUPTED, exit_on_interrupt
from tests.conftest import circuit_settings, small_pipeline_args

ROOT = Path(__file__).resolve().parents[2]
DRIVER_TIMEOUT_S = 900  # a wait for one driver's stage or end, not a timing assertion
FATE_SHARING_S = 20  # how long Ray's processes may take to follow a killed driver


# -- what a study directory holds ------------------------------------------------------------------------


def finished_files(out: Path) -> dict[Path, int]:
    """Return the finished outputs under ``out`` and their mtimes: every file of a checkpoint its run's
    index lists (but the training state, which only the newest checkpoint keeps), both files of every
    circuit whose JSON (written last) exists, and the accuracy tables."""
    files: list[Path] = []
    for index in out.rglob(f"{CHECKPOINTS_DIR}/{INDEX_FILE}"):
        for path in pl.read_parquet(index)["path"]:
            files += [p for p in Path(path).rglob("*") if p.is_file()
                      and DeepSpeedStrategy.ENGINE_STATE not in p.relative_to(path).parts]  # fmt: skip
    for edges in out.rglob(f"*{EDGES_SUFFIX}"):
        meta = edges.with_name(edges.name.removesuffix(EDGES_SUFFIX) + ".json")
        if meta.is_file():
            files += [edges, meta]
    files += list((out / "accuracy").glob("*.json"))
    return {path: path.stat().st_mtime_ns for path in files}


def half_written(out: Path) -> set[Path]:
    """Return the temporary siblings of atomic writes under ``out`` (``.<name>.<random>``)."""
    return {p for p in out.rglob(".*") if p.name.count(".") >= 2 and not p.name.startswith(".nfs")}


# -- one driver ------------------------------------------------------------------------------------------


@dataclass
class Driver:
    """A pipeline driver in a session of its own; its output lines arrive in ``lines``."""

    process: subprocess.Popen
    lines: queue.Queue = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    seen: dict[int, float] = field(default_factory=dict)  # pid -> create time, of every process under it
    reader: threading.Thread | None = None

    def read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def note_processes(self) -> None:
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in children:
            try:
                self.seen.setdefault(child.pid, child.create_time())
            except psutil.NoSuchProcess:
                continue

    def wait_until(self, ready: Callable[[str | None], bool]) -> bool:
        """Read lines until ``ready(line)`` (also asked every half second with None); False at the end."""
        deadline = time.monotonic() + DRIVER_TIMEOUT_S
        while time.monotonic() < deadline:
            self.note_processes()
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                line = ""
            if line is None:
                return False
            if ready(line or None):
                return True
        raise AssertionError(f"the driver neither reached the point nor ended:\n{''.join(self.output[-40:])}")

    def leftovers(self) -> list[psutil.Process]:
        """Return the processes seen under the driver that are still alive (not reused PIDs)."""
        alive = []
        for pid, created in self.seen.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                continue
        return alive

    def finish(self) -> tuple[int, list[str]]:
        """Wait for the driver's end; give Ray's processes time to follow it, then kill any left (by PID);
        return its exit status and the commands of the processes that outlived it."""
        code = self.process.wait(timeout=DRIVER_TIMEOUT_S)
        self.reader.join(timeout=60)  # its last lines
        deadline = time.monotonic() + FATE_SHARING_S
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.5)
        outlived = []
        for process in self.leftovers():
            try:
                outlived.append(" ".join(process.cmdline()[:3]))
                process.kill()
            except psutil.NoSuchProcess:
                continue
        return code, outlived


@dataclass
class Study:
    """A small pipeline's arguments, output directory and environment."""

    argv: list[str]
    out: Path
    env: dict[str, str]

    def start(self) -> Driver:
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "jobs.pipeline", *self.argv], cwd=ROOT, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        driver = Driver(process)
        driver.reader = threading.Thread(target=driver.read, daemon=True)
        driver.reader.start()
        return driver


@pytest.fixture()
def study(tmp_path, tiny_run, ray_cluster) -> Study:
    """The drivers join the session's cluster, which outlives each of them (as a cluster does a job's)."""
    import ray

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the fixture's token path
    path = os.pathsep.join(filter(None, [str(ROOT / "platform"), str(ROOT), env.get("PYTHONPATH")]))
    env |= {"RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": path}
    circuits = circuit_settings(8, 8, baselines=["permuted"], actors=1)
    argv = small_pipeline_args(tmp_path, tiny_run / "base", str(tmp_path / "study"), circuits)
    return Study(argv, tmp_path / "study", env)


# -- the scenario ----------------------------------------------------------------------------------------

STAGES = ("data and base accuracy", "fine-tuning", "circuits of every checkpoint", "circuit dynamics",
          "CircuitLoRA against LoRA", "report")  # fmt: skip


def progress(out: Path) -> tuple[int, int]:
    """Return how many checkpoints the indexes under ``out`` list, and how many circuits are finished."""
    rows = sum(pl.read_parquet(index).height for index in out.rglob(f"{CHECKPOINTS_DIR}/{INDEX_FILE}"))
    circuits = sum(1 for edges in out.rglob(f"*{EDGES_SUFFIX}")
                   if edges.with_name(edges.name.removesuffix(EDGES_SUFFIX) + ".json").is_file())  # fmt: skip
    return rows, circuits


def inside(stage: int, out: Path, log: list[str]) -> Callable[[str | None], bool]:
    """Return the test of a driver's line that says it is working inside ``stage``: its header, and for the
    long stages new work of theirs (two checkpoints of fine-tuning, a circuit, two checkpoints of
    CircuitLoRA); the next stage's header when that comes first."""
    need = {1: (2, 0), 2: (0, 1), 4: (2, 0)}.get(stage)
    started: list[tuple[int, int]] = []

    def ready(line: str | None) -> bool:
        if line is not None and line.startswith("== "):
            title = line[3:]
            if title.startswith(STAGES[stage]):
                started.append(progress(out))
                return need is None
            if started and stage + 1 < len(STAGES) and title.startswith(STAGES[stage + 1]):
                log.append(f"stage {STAGES[stage]!r} ended before its work could be interrupted")
                return True
        if started and need is not None:
            now = progress(out)
            return now[0] >= started[0][0] + need[0] and now[1] >= started[0][1] + need[1]
        return False

    return ready


def changed(before: dict[Path, int], out: Path) -> list[str]:
    after = finished_files(out)
    return [f"{p.relative_to(out)}: {'gone' if p not in after else 'rewritten'}"
            for p, stamp in before.items() if after.get(p) != stamp]  # fmt: skip


def test_ctrl_c_ends_a_job_with_one_line_and_status_130(capsys):
    with pytest.raises(SystemExit) as exit_, exit_on_interrupt():
        raise KeyboardInterrupt
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [INTERRUPTED]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_driver_interrupted_in_each_stage_resumes_without_redoing_or_using_half_written_work(study, signum):
    """One chain: interrupt in stage 1, rerun and interrupt in stage 2, ... , then rerun to the end."""
    log: list[str] = []
    for stage in range(len(STAGES)):
        before = finished_files(study.out)
        driver = study.start()
        assert driver.wait_until(inside(stage, study.out, log)), (
            f"the driver ended before stage {STAGES[stage]!r}:\n{''.join(driver.output[-40:])}"
        )
        signalled = len(driver.output)
        os.kill(driver.process.pid, signum)
        code, outlived = driver.finish()
        after_signal = "".join(driver.output[signalled:])
        log.append(f"{signum.name} in {STAGES[stage]!r}: exit {code}; {len(before)} finished files before, "
                   f"{len(finished_files(study.out))} after; half-written: "
                   f"{sorted(str(p.relative_to(study.out)) for p in half_written(study.out))}; "
                   f"outlived: {outlived}")  # fmt: skip
        print(log[-1], flush=True)
        redone = changed(before, study.out)
        assert not redone, f"{signum.name} in {STAGES[stage]!r}: finished work redone: {redone}"
        if signum == signal.SIGINT:
            assert code == 130, f"exit {code} after SIGINT:\n{after_signal[-3000:]}"
            assert INTERRUPTED in after_signal
            assert "Traceback" not in after_signal, after_signal[-3000:]
        else:
            assert code == -signal.SIGKILL
    before = finished_files(study.out)
    driver = study.start()
    assert not driver.wait_until(lambda line: False)
    code, outlived = driver.finish()
    assert code == 0, "".join(driver.output[-60:])
    assert not changed(before, study.out)
    assert (study.out / "report.html").is_file()
    assert not outlived, outlived
    # nothing the finished study lists is a temporary sibling of an atomic write
    for index in study.out.rglob(f"{CHECKPOINTS_DIR}/{INDEX_FILE}"):
        assert not any(part.startswith(".") for path in pl.read_parquet(index)["path"]
                       for part in Path(path).relative_to(study.out).parts)  # fmt: skip
    print("\n".join(log))
