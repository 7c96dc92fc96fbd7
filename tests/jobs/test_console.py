"""A job's console: what is said and its bars reach the terminal (a copy in the driver log); everything
else the process writes, Python or native, goes to the driver log; a bar off a terminal prints few whole
lines; an error that ends the job is shown. No Ray: the pipeline's own console is tested end to end in
tests/jobs/test_pipeline.py."""

from __future__ import annotations

import io
import os
import sys

import pytest

from ftcircuits import console
from ftcircuits.cluster.train import ProgressFile, read_progress, watch_progress
from ftcircuits.console import progress, say
from jobs.console import DRIVER_LOG, LOGS_DIR, job_console


@pytest.fixture()
def attached():
    terminal, log = io.StringIO(), io.StringIO()
    console.attach(terminal, log)
    try:
        yield terminal, log
    finally:
        console.detach()


def test_a_bar_off_a_terminal_prints_a_few_whole_lines_with_its_newest_metric(attached):
    terminal, log = attached
    bar = progress(200, "circuits", "circuit")
    for i in range(200):
        bar.set_postfix_str(f"unit {i} faithfulness 0.50")
        bar.update(1)
    bar.close()
    lines = terminal.getvalue().splitlines()
    assert "\r" not in terminal.getvalue() and len(lines) == 5, lines  # its start and each quarter
    assert lines[-1].startswith("circuits: 100%") and "200/200" in lines[-1] and "unit 199" in lines[-1]
    assert log.getvalue() == terminal.getvalue()


def test_say_writes_to_the_terminal_and_the_log(attached, capsys):
    terminal, log = attached
    say("== a stage", 3)
    assert terminal.getvalue() == log.getvalue() == "== a stage 3\n"
    assert capsys.readouterr().out == ""


def test_outside_a_job_console_say_prints(capsys):
    say("a result")
    assert capsys.readouterr().out == "a result\n"


def test_the_job_console_shows_what_is_said_and_logs_everything(tmp_path, capfd):
    with job_console(tmp_path) as logs:
        print("a library's line")
        print("a library's warning", file=sys.stderr)
        os.write(2, b"a native library's line\n")
        say("== a stage")
        sys.stdout.flush()
    shown = capfd.readouterr()
    assert shown.out == "== a stage\n" and shown.err == ""
    driver = (tmp_path / LOGS_DIR / DRIVER_LOG).read_text()
    for line in ("a library's line", "a library's warning", "a native library's line", "== a stage"):
        assert line in driver
    assert logs.directory == tmp_path / LOGS_DIR and not console.quiet()


def test_the_job_console_shows_the_error_that_ends_a_job(tmp_path, capfd):
    with pytest.raises(SystemExit) as exit_, job_console(tmp_path):
        raise SystemExit("error: a bad input")
    assert exit_.value.code == 1
    assert capfd.readouterr().err == "error: a bad input\n"
    assert "error: a bad input" in (tmp_path / LOGS_DIR / DRIVER_LOG).read_text()


def test_verbose_shows_everything_and_still_logs_it(tmp_path, capfd):
    with job_console(tmp_path, verbose=True):
        print("a library's line", flush=True)
        say("== a stage")
    assert capfd.readouterr().out.splitlines() == ["a library's line", "== a stage"]
    assert "a library's line" in (tmp_path / LOGS_DIR / DRIVER_LOG).read_text()


def test_the_fine_tuning_bar_follows_rank_0s_progress_file(attached, tmp_path):
    terminal, _ = attached
    tracker = ProgressFile(tmp_path)
    with watch_progress(tmp_path, 10, "fine-tuning"):
        tracker.update(step=3, train_loss=2.5)
        tracker.update(step=4, train_loss=2.0)  # within PROGRESS_INTERVAL_S: kept for the next write
        tracker.update(force=True, step=5, eval_accuracy=0.25)  # a checkpoint
    assert read_progress(tmp_path) == {"step": 5, "train_loss": 2.0, "eval_accuracy": 0.25}
    last = terminal.getvalue().splitlines()[-1]
    assert last.startswith("fine-tuning:  50%") and "5/10" in last
    assert "train loss 2.000, eval accuracy 0.250" in last
