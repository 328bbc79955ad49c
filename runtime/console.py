"""How commands talk to the user: one-line errors with exit codes, the result on stdout, progress
and warnings on stderr, and the parsing of flags several commands share. Used by runtime/cli.py and by the commands
that train/, export/ and bench/ register (importing this module registers nothing).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from fraudscore.errors import FraudscoreError, UsageError

F = TypeVar("F", bound=Callable[..., None])


def reports_errors(command: F) -> F:
    """Turn a FraudscoreError into one line on stderr and its exit code, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FraudscoreError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def say(message: str) -> None:
    """Progress, warnings and other diagnostics go to stderr."""
    typer.echo(message, err=True)


def report(message: str) -> None:
    """A command's result, what it did or found (a summary, a table), goes to stdout. A command
    whose stdout carries data lines (`dlq show`, `--json`) says its summary with `say` instead,
    so the data stays parseable."""
    typer.echo(message)


def parse_instant(value: str, flag: str) -> int:
    """A date (midnight) or a date and time, UTC like TX_DATETIME, as epoch seconds."""
    try:
        when = dt.datetime.fromisoformat(value.strip().replace(" ", "T"))
    except ValueError:
        raise UsageError(f"{flag} must be a date or a date and time like 2018-05-16 or 2018-05-16T08:00:00 (UTC), "
                         f"got {value!r}") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return int((when - dt.datetime(1970, 1, 1)).total_seconds())


def iso_time(seconds: int) -> str:
    """Epoch seconds as a UTC date and time, the way TX_DATETIME writes them."""
    return (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=int(seconds))).isoformat(sep=" ")


def parse_date(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} must be a date like 2018-04-01, got {value!r}") from None


def check_output(path: Path) -> None:
    """Fail before the work, not after it, when the output cannot be written."""
    from fraudscore.data.table import file_format, pyarrow_or_none

    fmt = file_format(path)
    if fmt == "parquet" and pyarrow_or_none() is None:
        raise UsageError(f"{path}: writing Parquet needs pyarrow; pip install 'fraudscore[parquet]' or use .csv")
    from fraudscore.atomic import check_parent

    check_parent(path)  # missing parent directories are created when the output is written


def int_list(value: str, flag: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers like 64,32, got {value!r}") from None
    if any(w < 1 for w in widths):
        raise UsageError(f"{flag}: widths must be positive")
    return widths
