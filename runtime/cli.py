"""The `fraudscore` command line: one function a command.

The runtime's own commands live here (simulate, features, evaluate, score, run); train,
export and bench live in their packages (`train/cli.py`, `export/cli.py`, `bench/cli.py`)
and register themselves through the `fraudscore.commands` entry point, so nothing under
runtime/ imports them. Heavy modules are imported inside the commands, so
`fraudscore --help` and every `fraudscore COMMAND --help` answer without loading them (a
test checks that no TensorFlow, Keras, tf2onnx or onnx module is imported).
"""

from __future__ import annotations

import datetime as dt
import functools

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer

from fraudscore import __version__
from fraudscore.errors import FraudscoreError, UsageError

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


def parse_date(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} must be a date like 2018-04-01, got {value!r}") from None


def check_output(path: Path) -> None:
    """Fail before the work, not after it, when the output cannot be written."""
    from fraudscore.data.table import _pyarrow, file_format

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
    from fraudscore.data.simulate import SimulationConfig, simulate as run_simulation
    from fraudscore.data.table import write_table

    check_output(out)
    config = SimulationConfig(
        customers=customers,
        terminals=terminals,
        days=days,
        start=parse_date(start, "--start"),
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
    from fraudscore.features.baseline import add_baseline_features
    from fraudscore.data.table import read_table, write_table

    check_output(out)
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


def int_list(value: str, flag: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers like 64,32, got {value!r}") from None
    if any(w < 1 for w in widths):
        raise UsageError(f"{flag}: widths must be positive")
    return widths


@app.command()
@reports_errors
def evaluate(
    bundle: Annotated[list[Path], typer.Option("--bundle", "-b", help="Bundle directory; repeat to compare bundles side by side.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Feature table covering the training and test windows.")],
    start: Annotated[str, typer.Option(help="First training day of the split, YYYY-MM-DD.")],
    train_days: Annotated[int, typer.Option(min=1)] = 7,
    delay_days: Annotated[int, typer.Option(min=0)] = 7,
    test_days: Annotated[int, typer.Option(min=1)] = 7,
    k: Annotated[int, typer.Option(min=1, help="Cards a day for card precision@k.")] = 100,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Score a feature table through exported bundles; report AUC, AP and card precision@k per the protocol."""
    import json

    from fraudscore.data.evaluate import evaluate_bundles, format_table
    from fraudscore.serving.scorer import DEVICES

    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if json_path is not None:
        check_output(json_path.with_suffix(".csv"))  # only its directory matters here
    report = evaluate_bundles(
        bundle, data, parse_date(start, "--start"), train_days=train_days, delay_days=delay_days,
        test_days=test_days, k=k, device=device,
    )
    typer.echo(format_table(report, k))
    if json_path is not None:
        from fraudscore.atomic import write_bytes

        write_bytes(json_path, (json.dumps(report, indent=2) + "\n").encode())


@app.command()
@reports_errors
def score(
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle directory (model.onnx + manifest.json).")],
    input_path: Annotated[Path, typer.Option("--in", "-i", help="Transactions: .jsonl (one JSON object a line, as on the input topic), .csv, .csv.gz or .parquet with the feature columns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results: .jsonl (result messages) or .csv, .csv.gz, .parquet (id, score, decision).")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Score a file offline through the same decode -> ONNX Runtime -> encode core as the sidecar.

    Rejected rows (bad JSON, missing or non-numeric features, NaN/inf) go to OUT.rejected.jsonl
    with their line number and reason; the exit code is 0 even then, 2 for bad flags or files.
    """
    from fraudscore.serving.files import score_file

    t0 = time.perf_counter()
    summary = score_file(bundle, input_path, out, device=device, threads=threads)
    if not quiet:
        rejected = f"; {summary.rejected:,} rejected -> {summary.rejects_path}" if summary.rejected else ""
        say(f"scored {summary.scored:,} transactions ({summary.alerts:,} alerts){rejected}; wrote {out} in {time.perf_counter() - t0:.2f} s")


@app.command()
@reports_errors
def run(
    bundle: Annotated[Optional[Path], typer.Option(help="Bundle directory.", envvar="FRAUDSCORE_BUNDLE")] = None,
    bootstrap_servers: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers, host:port[,host:port].", envvar="FRAUDSCORE_BOOTSTRAP_SERVERS")] = None,
    input_topic: Annotated[Optional[str], typer.Option(help="Transactions to score.", envvar="FRAUDSCORE_INPUT_TOPIC")] = None,
    output_topic: Annotated[Optional[str], typer.Option(help="One result per scored input.", envvar="FRAUDSCORE_OUTPUT_TOPIC")] = None,
    alerts_topic: Annotated[Optional[str], typer.Option(help="Results at or above the threshold.", envvar="FRAUDSCORE_ALERTS_TOPIC")] = None,
    dlq_topic: Annotated[Optional[str], typer.Option(help="Rejected inputs: original bytes + reason headers.", envvar="FRAUDSCORE_DLQ_TOPIC")] = None,
    group_id: Annotated[Optional[str], typer.Option(help="Consumer group; sidecars in one group split the partitions.", envvar="FRAUDSCORE_GROUP_ID")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Port of /metrics, /healthz, /readyz (0: any free port) [default: 9464].", envvar="FRAUDSCORE_METRICS_PORT")] = None,
    metrics_host: Annotated[Optional[str], typer.Option(help="Address to bind the metrics port [default: 127.0.0.1].", envvar="FRAUDSCORE_METRICS_HOST")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Most messages a batch [default: 4096].", envvar="FRAUDSCORE_BATCH_SIZE")] = None,
    poll_timeout: Annotated[Optional[float], typer.Option(help="Seconds consume() waits to fill a batch; a batch is whatever arrived by then, up to --batch-size [default: 0.005].", envvar="FRAUDSCORE_POLL_TIMEOUT")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda [default: cpu].", envvar="FRAUDSCORE_DEVICE")] = None,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads [default: 1].", envvar="FRAUDSCORE_THREADS")] = None,
    exactly_once: Annotated[Optional[bool], typer.Option("--exactly-once/--at-least-once", help="Kafka transactions per batch [default: at-least-once].", envvar="FRAUDSCORE_EXACTLY_ONCE")] = None,
    transactional_id: Annotated[Optional[str], typer.Option(help="transactional.id with --exactly-once; stable per instance [default: fraudscore-GROUP-HOSTNAME].", envvar="FRAUDSCORE_TRANSACTIONAL_ID")] = None,
    offset_reset: Annotated[Optional[str], typer.Option(help="Where a group with no committed offsets starts: earliest or latest [default: earliest].", envvar="FRAUDSCORE_OFFSET_RESET")] = None,
    wait: Annotated[Optional[bool], typer.Option("--wait/--no-wait", help="Wait for the broker and topics at start-up instead of exiting [default: no-wait].", envvar="FRAUDSCORE_WAIT")] = None,
    startup_timeout: Annotated[Optional[float], typer.Option(help="Seconds to reach the broker at start-up [default: 15].", envvar="FRAUDSCORE_STARTUP_TIMEOUT")] = None,
    drain_timeout: Annotated[Optional[float], typer.Option(help="Seconds to flush outputs per batch and at shutdown [default: 30].", envvar="FRAUDSCORE_DRAIN_TIMEOUT")] = None,
    watch: Annotated[Optional[bool], typer.Option("--watch/--no-watch", help="Reload the bundle when its files change (SIGHUP always reloads).", envvar="FRAUDSCORE_WATCH")] = None,
    kafka_property: Annotated[Optional[list[str]], typer.Option("-X", "--kafka-property", help="Any librdkafka property, key=value (repeat): security.protocol, sasl.*, ssl.* ... Keep secrets out of flags (they show in ps): use FRAUDSCORE_KAFKA_* variables or --kafka-properties-file.")] = None,
    kafka_properties_file: Annotated[Optional[Path], typer.Option(help="File of librdkafka properties, key=value lines (# comments), e.g. a mounted secret with sasl.password.", envvar="FRAUDSCORE_KAFKA_PROPERTIES_FILE")] = None,
    require_tls: Annotated[Optional[bool], typer.Option("--require-tls/--allow-plaintext", help="Refuse to start unless security.protocol is SSL or SASL_SSL with certificate verification on [default: allow-plaintext].", envvar="FRAUDSCORE_REQUIRE_TLS")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file with any of these options (flag names with underscores) and a [kafka] table.", envvar="FRAUDSCORE_CONFIG")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.", envvar="FRAUDSCORE_LOG_LEVEL")] = "INFO",
) -> None:
    """Run the Kafka sidecar: score input batches, publish results, alerts and dead letters.

    Settings come from flags, then FRAUDSCORE_* environment variables, then --config, then
    defaults. librdkafka properties: -X, then FRAUDSCORE_KAFKA_<NAME> variables
    (FRAUDSCORE_KAFKA_SASL_PASSWORD -> sasl.password), then --kafka-properties-file, then the
    [kafka] table of --config; secret values are never printed. Exit codes: 0 after
    SIGTERM/SIGINT (batch in flight finished and committed), 2 bad configuration or bundle,
    3 broker unreachable, credentials or certificate refused, or topics missing.
    """
    from fraudscore.serving.sidecar import Sidecar, SidecarConfig, configure_logging, install_signal_handlers

    configure_logging(log_level)
    flags = {
        "bundle": bundle, "bootstrap_servers": bootstrap_servers, "input_topic": input_topic,
        "output_topic": output_topic, "alerts_topic": alerts_topic, "dlq_topic": dlq_topic, "group_id": group_id,
        "metrics_port": metrics_port, "metrics_host": metrics_host, "batch_size": batch_size,
        "poll_timeout_s": poll_timeout, "device": device, "threads": threads, "exactly_once": exactly_once,
        "transactional_id": transactional_id, "offset_reset": offset_reset, "wait": wait,
        "startup_timeout_s": startup_timeout, "drain_timeout_s": drain_timeout, "watch": watch,
        "require_tls": require_tls,
    }
    cfg = SidecarConfig.from_sources(flags, config_file=config, properties_file=kafka_properties_file,
                                     kafka_flags=kafka_property)
    sidecar = Sidecar(cfg)
    install_signal_handlers(sidecar)
    raise typer.Exit(sidecar.run())


PLUGIN_GROUP = "fraudscore.commands"


def register_plugins(target: typer.Typer = app) -> list[str]:
    """Add the commands of the optional packages (train, export, bench) that declare a
    `fraudscore.commands` entry point. The runtime names none of them: the dependency runs
    from those packages to this one, never back."""
    from importlib.metadata import entry_points

    names = []
    order = {"train": 0, "export": 1, "bench": 2}  # the data flow's order in --help
    for point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: (order.get(p.name, 9), p.name)):
        point.load()(target)
        names.append(point.name)
    return names


register_plugins()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="fraudscore")


if __name__ == "__main__":
    main()
