"""What a job shows a person: ``say`` for stage lines and results, ``progress`` for a long stage's bar.

Outside a job's console both write where they always did (``say`` to stdout, a bar to stderr). A job's
quiet console (``jobs.console.job_console``) points them at the terminal, with a copy of each line in the
driver log, while everything else the process writes (libraries' logs and warnings, Ray's lines) goes to
that log only. Off a terminal (a pipe, a file, CI's log) a bar prints a few whole lines (its start, each
quarter, its end) instead of hundreds of carriage-return updates.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

if TYPE_CHECKING:
    import polars as pl

QUARTERS = 4
"""Off a terminal, a bar prints a line as it passes each 1/QUARTERS of its total (and its first and last)."""
PIPE_INTERVAL_S = 60.0
"""Off a terminal, a bar without a total prints a line at most this often."""


@dataclass
class _Console:
    terminal: TextIO | None = None  # set while a job's quiet console owns the process's output
    log: TextIO | None = None  # the driver log: a copy of every line said
    errors: TextIO | None = None  # the terminal's error stream


_console = _Console()
_lock = threading.Lock()


def attach(terminal: TextIO, log: TextIO, errors: TextIO | None = None) -> None:
    """Send ``say`` and bars to ``terminal``, ``say_error`` to ``errors`` (default: ``terminal``), a copy
    of each line to ``log``: a job's quiet console."""
    _console.terminal, _console.log, _console.errors = terminal, log, errors or terminal


def detach() -> None:
    _console.terminal = _console.log = _console.errors = None


def quiet() -> bool:
    """True while a job's quiet console is attached: Ray's and Tune's own console output stays off."""
    return _console.terminal is not None


def result_tables(**options: object) -> pl.Config:
    """Return polars' table settings for results a person reads (``with result_tables(tbl_width_chars=200):
    str(table)``): a markdown table of every row and column (its header, a rule and the rows: no borders,
    shape or dtype lines); ``options`` add to them."""
    import polars as pl  # here: jobs.cli (and so bench_gpu, which runs without polars) imports this module

    return pl.Config(tbl_formatting="ASCII_MARKDOWN", tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True,
                     tbl_hide_column_data_types=True, tbl_hide_dtype_separator=True, **options)  # fmt: skip


def say(*parts: object, sep: str = " ", end: str = "\n") -> None:
    """Print a line a person reads (a stage header, a result, where the outputs are): ``print``'s
    arguments."""
    text = sep.join(map(str, parts)) + end
    with _lock:
        if _console.terminal is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        _console.terminal.write(text)
        _console.terminal.flush()
        _console.log.write(text)
        _console.log.flush()


def say_error(text: str) -> None:
    """Print an error a person must see: to the terminal when a console is attached, else stderr."""
    with _lock:
        stream = _console.errors or sys.stderr
        stream.write(text.rstrip("\n") + "\n")
        stream.flush()
        if _console.log is not None:
            _console.log.write(text.rstrip("\n") + "\n")
            _console.log.flush()


class _Lines:
    """A bar's stream off a terminal: each refresh as one whole line (no carriage returns), repeats
    dropped; the log gets the same lines."""

    def __init__(self, stream: TextIO, log: TextIO | None) -> None:
        self.stream, self.log, self.last = stream, log, ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").rstrip()
        if not line or line == self.last:
            return
        self.last = line
        with _lock:
            for stream in filter(None, (self.stream, self.log)):
                stream.write(line + "\n")
                stream.flush()

    def flush(self) -> None:
        pass


class _TerminalBar(tqdm):
    """A live bar on a terminal whose last state also goes to the driver log when it closes."""

    def __init__(self, *args, log: TextIO | None = None, **kwargs) -> None:
        self._log = log
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        if self._log is not None and not self.disable and not getattr(self, "_logged", False):
            self._logged = True
            with _lock:
                self._log.write(str(self).rstrip() + "\n")
                self._log.flush()
        super().close()


class _LineBar(tqdm):
    """A bar off a terminal: its first state, a line when it passes each quarter of its total (at most every
    PIPE_INTERVAL_S without a total), and its last state when it closes unless that line is printed
    already; a new metric waits for the next line. Five or six lines however long the stage takes."""

    monitor_interval = 0  # no monitor thread forcing refreshes of its own

    def __init__(self, *args, **kwargs) -> None:
        self._shown, self._shown_at, self._closing = None, 0.0, False
        super().__init__(*args, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=False)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        state, now = (self.n, self.postfix), time.monotonic()
        if msg is None and self._shown is not None:
            if state == self._shown or (not self._closing and not self._due(now)):
                return True
        self._shown, self._shown_at = state, now
        return super().display(msg, pos)

    def _due(self, now: float) -> bool:
        if not self.total:
            return now - self._shown_at >= PIPE_INTERVAL_S
        quarter = QUARTERS * self.n // self.total
        return quarter > QUARTERS * self._shown[0] // self.total

    def close(self) -> None:
        self._closing = True
        super().close()


def progress(total: int | None, desc: str, unit: str = "it", disable: bool = False) -> tqdm:
    """Return a tqdm bar for a long stage (``total`` units; its newest metric by ``set_postfix_str``):
    live on a terminal, a few whole lines elsewhere (``_LineBar``)."""
    terminal = _console.terminal
    stream = terminal if terminal is not None else sys.stderr
    if stream.isatty():
        return _TerminalBar(total=total, desc=desc, unit=unit, file=stream, disable=disable, log=_console.log,
                            dynamic_ncols=True)  # fmt: skip
    lines = _Lines(stream, _console.log)
    return _LineBar(total=total, desc=desc, unit=unit, file=lines, disable=disable, mininterval=0,
                    miniters=1)  # fmt: skip  # _LineBar.display decides
