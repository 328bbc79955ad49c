"""The `fraudscore` command line: one function a command.

Heavy modules are imported inside the commands, so `fraudscore --help` and every
`fraudscore COMMAND --help` answer without loading them (a test checks that no
TensorFlow, Keras, tf2onnx or onnx module is imported).
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from . import __version__
from .errors import FraudscoreError, UsageError

app = typer.Typer(
    name="fraudscore",
    help="Real-time card-fraud scoring: simulate data, build features, score with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

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
    """Progress and summaries go to stderr, so stdout stays free for data."""
    typer.echo(message, err=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fraudscore {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Real-time card-fraud scoring: simulate data, build features, score with ONNX Runtime."""


def _parse_date(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} must be a date like 2018-04-01, got {value!r}") from None


def _check_output(path: Path) -> None:
    """Fail before the work, not after it, when the output cannot be written."""
    from .table import _pyarrow, file_format

    fmt = file_format(path)
    if fmt == "parquet" and _pyarrow() is None:
        raise UsageError(f"{path}: writing Parquet needs pyarrow; pip install 'fraudscore[parquet]' or use .csv")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{path}: directory {parent} does not exist; create it first")


@app.command()
@reports_errors
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .csv, .csv.gz or .parquet.")],
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 5_000,
    terminals: Annotated[int, typer.Option(min=1, help="Number of terminals.")] = 10_000,
    days: Annotated[int, typer.Option(min=1, help="Number of days to simulate.")] = 183,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")] = "2018-04-01",
    seed: Annotated[int, typer.Option(min=0, help="Random seed; same seed and options give the same bytes.")] = 0,
    radius: Annotated[float, typer.Option(help="A customer uses the terminals closer than this.")] = 5.0,
    compromised_terminals: Annotated[
        int, typer.Option(min=0, help="Terminals compromised each day (fraud scenario 2).")
    ] = 2,
    compromised_customers: Annotated[
        int, typer.Option(min=0, help="Customers compromised each day (fraud scenario 3).")
    ] = 3,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
) -> None:
    """Generate simulated card transactions with three fraud scenarios.

    The generator of the Fraud Detection Handbook (Le Borgne et al., 2022, ch. 3.2); the
    defaults are its reference size (about 1.75 M transactions, 0.84 % fraud).
    """
    from .simulate import SimulationConfig, simulate as run_simulation
    from .table import write_table

    _check_output(out)
    config = SimulationConfig(
        customers=customers,
        terminals=terminals,
        days=days,
        start=_parse_date(start, "--start"),
        seed=seed,
        radius=radius,
        compromised_terminals_per_day=compromised_terminals,
        compromised_customers_per_day=compromised_customers,
    )
    t0 = time.perf_counter()
    sim = run_simulation(config, progress=None if not quiet else False)
    t1 = time.perf_counter()
    write_table(sim.transactions, out)
    t2 = time.perf_counter()
    if not quiet:
        tx = sim.transactions
        n, frauds = len(tx), int(tx["TX_FRAUD"].sum())
        import numpy as np

        per = np.bincount(tx["TX_FRAUD_SCENARIO"], minlength=4)
        say(
            f"simulated {n:,} transactions, {frauds:,} frauds ({100 * frauds / max(n, 1):.2f} %; "
            f"scenario 1: {per[1]:,}, 2: {per[2]:,}, 3: {per[3]:,}) in {t1 - t0:.2f} s; "
            f"wrote {out} in {t2 - t1:.2f} s"
        )


@app.command()
@reports_errors
def features(
    input_path: Annotated[Path, typer.Option("--in", "-i", help="Raw transactions: .csv, .csv.gz or .parquet.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Feature table: .csv, .csv.gz or .parquet.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary.")] = False,
) -> None:
    """Add the handbook's 15 baseline features to raw transactions.

    Weekend/night flags, customer spending over 1/7/30 days, and terminal risk over
    1/7/30 days with a 7-day label delay (Le Borgne et al., 2022, ch. 3.4). The output
    keeps every input column and appends the features under the handbook's names.
    """
    from .features import add_baseline_features
    from .table import read_table, write_table

    _check_output(out)
    t0 = time.perf_counter()
    table = read_table(input_path)
    t1 = time.perf_counter()
    result = add_baseline_features(table, source=str(input_path))
    t2 = time.perf_counter()
    write_table(result, out)
    t3 = time.perf_counter()
    if not quiet:
        say(
            f"read {len(table):,} transactions in {t1 - t0:.2f} s; features in {t2 - t1:.2f} s; "
            f"wrote {len(result.columns)} columns to {out} in {t3 - t2:.2f} s"
        )


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fraudscore")


if __name__ == "__main__":
    main()
    sys.exit(0)
