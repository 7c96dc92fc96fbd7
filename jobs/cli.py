"""Shared command line of the jobs: ``--config FILE`` and repeated ``--set key.path=value``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ftcircuits.cluster.address import ClusterUnreachableError
from ftcircuits.config.loading import ConfigError, Schema, load_config
from ftcircuits.console import say_error
from ftcircuits.integrity import DamagedFileError

INPUT_ERRORS: tuple[type[Exception], ...] = (DamagedFileError, ClusterUnreachableError)
"""Errors in a job's inputs (a damaged file, an unreachable cluster): exit status 2, as a bad config."""
INTERRUPTED = "interrupted; rerun the same command to resume"


def config_parser(description: str, console: bool = False) -> argparse.ArgumentParser:
    """Return the jobs' parser: ``--config``, ``--set``, and with ``console`` (a job that runs under
    ``jobs.console.job_console``) ``--verbose``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, help="YAML config file (defaults if omitted)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. --set finetune.lr=3e-4 (repeatable)",
    )
    if console:
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="print everything (Ray's workers, libraries' logs) as it comes, not only stages, progress "
            "and results; either way it is all in <out>/logs/",
        )
    return parser


def flag_overrides(args: argparse.Namespace, fields: Iterable[str]) -> list[str]:
    """Return ``field=value`` overrides for the shorthand flags given (each flag named as its config field),
    so ``--batch 8`` and ``--set batch=8`` mean the same."""
    return [f"{field}={getattr(args, field)}" for field in fields if getattr(args, field) is not None]


def parse_config(schema: type[Schema], args: argparse.Namespace, extra: list[str] = ()) -> Schema:
    """Return the validated config, or exit with status 2 and the error on stderr."""
    try:
        return load_config(schema, args.config, [*extra, *args.overrides])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


@contextmanager
def exit_on(*errors: type[Exception]) -> Iterator[None]:
    """Turn ``INPUT_ERRORS`` raised inside into exit status 2, and ``errors`` into exit status 1, each with
    ``error: message`` on stderr and no traceback (``with exit_on(ClusterError): connect()``)."""
    try:
        yield
    except INPUT_ERRORS as error:
        say_error(f"error: {error}")
        raise SystemExit(2) from None
    except errors as error:
        raise SystemExit(f"error: {error}") from None


@contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Turn Ctrl-C (KeyboardInterrupt) inside into one line on stderr and exit status 130 (128 + SIGINT, as
    a shell reports it), not a traceback: for a job whose finished work is cached, so a rerun resumes."""
    try:
        yield
    except KeyboardInterrupt:
        say_error(INTERRUPTED)
        raise SystemExit(130) from None
