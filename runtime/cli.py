"""The `fraudscore` command line: one function a command.

The runtime's own commands live here (simulate, features, evaluate, score, run); train,
export and bench live in their packages (`train/cli.py`, `export/cli.py`, `bench/cli.py`)
and register themselves through the `fraudscore.commands` entry point, so nothing under
runtime/ imports them. Heavy modules are imported inside the commands, so
`fraudscore --help` and every `fraudscore COMMAND --help` answer without loading them (a
test checks that no TensorFlow, Keras, tf2onnx or onnx module is imported).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from fraudscore import __version__
from fraudscore.console import check_output, iso_time, parse_date, parse_instant, report, reports_errors, say
from fraudscore.errors import UsageError
from fraudscore.progress import Throttle

app = typer.Typer(
    name="fraudscore",
    help="Real-time card-fraud scoring: simulate data, build features, score with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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
        report(
            f"simulated {n:,} transactions, {frauds:,} frauds ({100 * frauds / max(n, 1):.2f} %; "
            f"scenario 1: {per[1]:,}, 2: {per[2]:,}, 3: {per[3]:,}) in {t1 - t0:.2f} s; "
            f"wrote {out} in {t2 - t1:.2f} s"
        )


@app.command()
@reports_errors
def features(
    input_path: Annotated[Path, typer.Option("--in", "-i", help="Raw transactions: .csv, .csv.gz or .parquet.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Feature table: .csv, .csv.gz or .parquet.")],
    id_column: Annotated[str, typer.Option(help="Transaction id column (unique integers; orders same-second transactions).")] = "TRANSACTION_ID",
    time_column: Annotated[str, typer.Option(help="Timestamp column.")] = "TX_DATETIME",
    customer_column: Annotated[str, typer.Option(help="Card/customer column (integers).")] = "CUSTOMER_ID",
    terminal_column: Annotated[str, typer.Option(help="Terminal column (integers).")] = "TERMINAL_ID",
    amount_column: Annotated[str, typer.Option(help="Amount column; copied to the TX_AMOUNT feature when called otherwise.")] = "TX_AMOUNT",
    label: Annotated[str, typer.Option(help="Label column (0/1), for the terminal-risk features.")] = "TX_FRAUD",
    terminal_resolution: Annotated[str, typer.Option(
        help="Where terminal windows end: t - 7 days rounded down to 1s (the handbook's exact windows), "
             "1h, 2h, 3h, 4h, 6h, 8h, 12h or 1d. Coarser bounds raw mode's terminal memory by terminals x "
             "buckets (docs/raw-transactions.md#sizing). Recorded in a .parquet output for `train`; "
             "other than 1s needs one.")] = "1s",
    feature_version: Annotated[int, typer.Option(
        help="1: the handbook's 15 features. 2: those, the customer's log amount ratio and the terminal's "
             "confirmed frauds over 1, 7 and 30 days (21; docs/model-quality.md); needs a .parquet --out, which records the version for `train`.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary.")] = False,
) -> None:
    """Add the handbook's 15 baseline features to raw transactions (or version 2's 21).

    Weekend/night flags, customer spending over 1/7/30 days, and terminal risk over
    1/7/30 days with a 7-day label delay (Le Borgne et al., 2022, ch. 3.4). The output
    keeps every input column and appends the features under the handbook's names. Raw
    columns called otherwise are named with the *-column flags and --label (as in `train`).
    """
    import dataclasses
    import json

    from fraudscore.data.table import file_format, read_table, write_table
    from fraudscore.errors import InputError
    from fraudscore.features.baseline import SPEC_METADATA_KEY, add_baseline_features
    from fraudscore.features.spec import SPECS, parse_resolution

    check_output(out)
    if feature_version not in SPECS:
        raise UsageError(f"--feature-version {feature_version}: this fraudscore computes versions "
                         f"{', '.join(map(str, SPECS))}")
    try:
        spec = dataclasses.replace(SPECS[feature_version], terminal_resolution_s=parse_resolution(terminal_resolution))
    except InputError as exc:
        raise UsageError(f"--terminal-resolution: {exc}") from None
    for flag, needed in ((f"--terminal-resolution {terminal_resolution}", spec.terminal_resolution_s != 1),
                         (f"--feature-version {feature_version}", feature_version != 1)):
        if needed and file_format(out) != "parquet":
            raise UsageError(f"{flag} needs a .parquet --out: the table records its specification there, for "
                             "`train` to put in the bundle (a CSV cannot carry it)")
    columns = {"TRANSACTION_ID": id_column, "TX_DATETIME": time_column, "CUSTOMER_ID": customer_column,
               "TERMINAL_ID": terminal_column, "TX_AMOUNT": amount_column, "TX_FRAUD": label}
    if len(set(columns.values())) < len(columns):
        raise UsageError("--id-column, --time-column, --customer-column, --terminal-column, --amount-column and "
                         "--label must name six different columns")
    t0 = time.perf_counter()
    table = read_table(input_path)
    t1 = time.perf_counter()
    result = add_baseline_features(table, spec, source=str(input_path), columns=columns)
    t2 = time.perf_counter()
    write_table(result, out, metadata={SPEC_METADATA_KEY: json.dumps(spec.to_dict())})
    t3 = time.perf_counter()
    if not quiet:
        report(
            f"read {len(table):,} transactions in {t1 - t0:.2f} s; features in {t2 - t1:.2f} s; "
            f"wrote {len(result.columns)} columns to {out} in {t3 - t2:.2f} s"
        )


@app.command()
@reports_errors
def evaluate(
    bundle: Annotated[list[Path], typer.Option("--bundle", "-b", help="Bundle directory; repeat to compare bundles side by side.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Feature table covering the training and test windows.")],
    start: Annotated[Optional[str], typer.Option(help="First training day of the split, YYYY-MM-DD [default: the split `train` recorded in the first bundle]. A test window that overlaps a bundle's training window is refused.")] = None,
    train_days: Annotated[Optional[int], typer.Option(min=1, help="Days of the split's training window: the test window starts after them and the delay, and cards with a fraud in them count as known compromised [default: the bundle's, else 7].")] = None,
    delay_days: Annotated[Optional[int], typer.Option(min=0, help="Days between training and test [default: the bundle's, else 7].")] = None,
    test_days: Annotated[Optional[int], typer.Option(min=1, help="Days in the test window [default: the bundle's, else 7].")] = None,
    k: Annotated[int, typer.Option(min=1, help="Cards a day for card precision@k.")] = 100,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
    time_column: Annotated[Optional[str], typer.Option(help="Timestamp column [default: the one the bundle was trained with, else TX_DATETIME].")] = None,
    customer_column: Annotated[Optional[str], typer.Option(help="Card/customer column [default: the bundle's, else CUSTOMER_ID].")] = None,
    label: Annotated[Optional[str], typer.Option(help="Label column (0/1) [default: the bundle's, else TX_FRAUD].")] = None,
    mlflow_uri: Annotated[str, typer.Option(
        "--mlflow-uri", envvar="FRAUDSCORE_MLFLOW_URI",
        help="Also log the comparison (per bundle, keyed by model version; the split; the report) as one run to this "
             "MLflow tracking server; needs the `tracking` extra.")] = "",
    mlflow_experiment: Annotated[str, typer.Option(help="MLflow experiment of that run.")] = "fraudscore",
) -> None:
    """Score a feature table through exported bundles; report AUC, AP and card precision@k per the protocol,
    and next to them the production-like figures: every card, alerts a day at the bundle's threshold.

    The split is the one `fraudscore train` recorded in the first bundle unless --start names
    another; a test window that overlaps any bundle's training window is refused (exit 2, with
    a --start that is not). The protocol's figures leave out cards already known to be compromised; the
    production-like ones score every transaction of the test days, as a sidecar does, so their
    alerts a day are what case management would receive. The time, customer and label columns
    are those `fraudscore train` recorded in each bundle (--time-column, --customer-column,
    --label there); these flags override them."""
    import json

    from fraudscore.data.evaluate import evaluate_bundles, format_table
    from fraudscore.serving.scorer import DEVICES

    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if json_path is not None:
        check_output(json_path.with_suffix(".csv"))  # only its directory matters here
    if mlflow_uri:
        from fraudscore.tracking import check_server

        check_server(mlflow_uri)
    evaluation = evaluate_bundles(
        bundle, data, None if start is None else parse_date(start, "--start"), train_days=train_days, delay_days=delay_days,
        test_days=test_days, k=k, device=device, time_column=time_column, customer_column=customer_column,
        label_column=label,
    )
    for note in evaluation["notes"]:
        say(note)
    table = format_table(evaluation, k)
    report(table)
    if json_path is not None:
        from fraudscore.atomic import write_bytes

        write_bytes(json_path, (json.dumps(evaluation, indent=2) + "\n").encode())
    if mlflow_uri:
        from fraudscore.tracking import log_evaluation

        record = log_evaluation(mlflow_uri, mlflow_experiment, evaluation, table)
        say(f"logged to MLflow: experiment {record['experiment']!r} ({record['experiment_id']}), run {record['run_id']}")


@app.command()
@reports_errors
def score(
    bundle: Annotated[Path, typer.Option("--bundle", "-b", help="Bundle directory (model.onnx + manifest.json).")],
    input_path: Annotated[Path, typer.Option("--in", "-i", help="Transactions: .jsonl (one JSON object a line, as on the input topic), .csv, .csv.gz or .parquet with the feature columns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results: .jsonl (result messages) or .csv, .csv.gz, .parquet (id, score, decision).")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = 1,
    id_column: Annotated[Optional[str], typer.Option(help="Table input: the column holding the transaction ids, copied to the results under its own name [default: TRANSACTION_ID]. JSON Lines always use TRANSACTION_ID.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Score a file offline through the same decode -> ONNX Runtime -> encode core as the sidecar.

    Rejected rows (bad JSON, missing or non-numeric features, NaN/inf) go to OUT.rejected.jsonl
    with their line number and reason; the exit code is 0 even then, 2 for bad flags or files.
    A table without its id column is refused (exit 2): results never carry made-up ids.
    """
    from fraudscore.serving.files import score_file

    t0 = time.perf_counter()
    summary = score_file(bundle, input_path, out, device=device, threads=threads, id_column=id_column)
    if not quiet:
        rejected = f"; {summary.rejected:,} rejected -> {summary.rejects_path}" if summary.rejected else ""
        report(f"scored {summary.scored:,} transactions ({summary.alerts:,} alerts){rejected}; wrote {out} in {time.perf_counter() - t0:.2f} s")


STATE_TOPIC_HELP = ("Raw mode: compacted topic (and STATE_TOPIC-index) for snapshots of the feature state, so a restart "
                    "or a moved partition reads the last snapshot and only the input after it; and STATE_TOPIC-feed, "
                    "each partition's decoded transactions from its owner, so the terminal table does not decode every "
                    "partition; one per consumer group; `fraudscore topics create --state-topic` makes all three "
                    "[default: none, every restore replays the retained input].")


# Options `run` and `topics create` share: one definition each, so their spelling, environment
# variable and help cannot drift apart.
_SidecarBootstrap = Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers, host:port[,host:port].", envvar="FRAUDSCORE_BOOTSTRAP_SERVERS")]
_InputTopic = Annotated[Optional[str], typer.Option(help="Transactions to score.", envvar="FRAUDSCORE_INPUT_TOPIC")]
_OutputTopic = Annotated[Optional[str], typer.Option(help="One result per scored input.", envvar="FRAUDSCORE_OUTPUT_TOPIC")]
_AlertsTopic = Annotated[Optional[str], typer.Option(help="Results at or above the threshold.", envvar="FRAUDSCORE_ALERTS_TOPIC")]
_SidecarDlqTopic = Annotated[Optional[str], typer.Option(help="Rejected inputs: original bytes + reason headers.", envvar="FRAUDSCORE_DLQ_TOPIC")]
_LabelsTopic = Annotated[Optional[str], typer.Option(help="Raw mode: fraud confirmations (TRANSACTION_ID, TERMINAL_ID, TX_DATETIME, TX_FRAUD=1), read whole by every instance for the terminal-risk features.", envvar="FRAUDSCORE_LABELS_TOPIC")]
_StateTopic = Annotated[Optional[str], typer.Option(help=STATE_TOPIC_HELP, envvar="FRAUDSCORE_STATE_TOPIC")]
_KafkaProperty = Annotated[Optional[list[str]], typer.Option("-X", "--kafka-property", help="Any librdkafka property, key=value (repeat): security.protocol, sasl.*, ssl.* ... Keep secrets out of flags (they show in ps): use FRAUDSCORE_KAFKA_* variables or --kafka-properties-file.")]
_KafkaPropertiesFile = Annotated[Optional[Path], typer.Option(help="File of librdkafka properties, key=value lines (# comments), e.g. a mounted secret with sasl.password.", envvar="FRAUDSCORE_KAFKA_PROPERTIES_FILE")]
_LogLevel = Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.", envvar="FRAUDSCORE_LOG_LEVEL")]
_SidecarConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML file with any of these options (flag names with underscores) and a [kafka] table.", envvar="FRAUDSCORE_CONFIG")]


@app.command()
@reports_errors
def run(
    bundle: Annotated[Optional[Path], typer.Option(help="Bundle directory.", envvar="FRAUDSCORE_BUNDLE")] = None,
    bootstrap_servers: _SidecarBootstrap = None,
    input_topic: _InputTopic = None,
    output_topic: _OutputTopic = None,
    alerts_topic: _AlertsTopic = None,
    dlq_topic: _SidecarDlqTopic = None,
    group_id: Annotated[Optional[str], typer.Option(help="Consumer group; sidecars in one group split the partitions.", envvar="FRAUDSCORE_GROUP_ID")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Port of /metrics, /healthz, /readyz (0: any free port) [default: 9464].", envvar="FRAUDSCORE_METRICS_PORT")] = None,
    metrics_host: Annotated[Optional[str], typer.Option(help="Address to bind the metrics port [default: 127.0.0.1].", envvar="FRAUDSCORE_METRICS_HOST")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Most messages a batch [default: 4096].", envvar="FRAUDSCORE_BATCH_SIZE")] = None,
    batch_wait_ms: Annotated[Optional[float], typer.Option(help="Once a message is there, milliseconds to wait for more before scoring; 0 scores what is queued at once, so batches grow with the load, up to --batch-size [default: 0].", envvar="FRAUDSCORE_BATCH_WAIT_MS")] = None,
    poll_timeout: Annotated[Optional[float], typer.Option(help="Seconds one wait for a first message lasts while idle (how soon a stop or reload is seen) [default: 0.1].", envvar="FRAUDSCORE_POLL_TIMEOUT")] = None,
    pipelining: Annotated[Optional[bool], typer.Option("--pipelining/--no-pipelining", help="Consume and score the next batch while this one's outputs are acknowledged; offsets still move only after the acknowledgement [default: pipelining; always off with --exactly-once].", envvar="FRAUDSCORE_PIPELINING")] = None,
    commit_interval: Annotated[Optional[float], typer.Option(help="Seconds between asynchronous offset commits of delivered batches, or sooner once --batch-size delivered messages wait uncommitted (always on rebalance and at exit); one commit at a time; 0 commits as soon as the previous commit is answered. A hard kill re-scores the batches in flight and what was delivered since the last commit answered: normally up to this much input or one --batch-size [default: 0.1].", envvar="FRAUDSCORE_COMMIT_INTERVAL")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda [default: cpu].", envvar="FRAUDSCORE_DEVICE")] = None,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads [default: 1].", envvar="FRAUDSCORE_THREADS")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Sidecar processes in the group, one a core (one process scores on one core); the supervisor answers on --metrics-port, worker i on --metrics-port+1+i [default: 1].", envvar="FRAUDSCORE_WORKERS")] = None,
    exactly_once: Annotated[Optional[bool], typer.Option("--exactly-once/--at-least-once", help="Kafka transactions per batch [default: at-least-once].", envvar="FRAUDSCORE_EXACTLY_ONCE")] = None,
    transactional_id: Annotated[Optional[str], typer.Option(help="transactional.id with --exactly-once; stable per instance [default: fraudscore-GROUP-HOSTNAME].", envvar="FRAUDSCORE_TRANSACTIONAL_ID")] = None,
    offset_reset: Annotated[Optional[str], typer.Option(help="Where a group with no committed offsets starts: earliest or latest [default: earliest].", envvar="FRAUDSCORE_OFFSET_RESET")] = None,
    wait: Annotated[Optional[bool], typer.Option("--wait/--no-wait", help="Wait for the broker and topics at start-up instead of exiting [default: no-wait].", envvar="FRAUDSCORE_WAIT")] = None,
    startup_timeout: Annotated[Optional[float], typer.Option(help="Seconds to reach the broker at start-up [default: 15].", envvar="FRAUDSCORE_STARTUP_TIMEOUT")] = None,
    drain_timeout: Annotated[Optional[float], typer.Option(help="Seconds to flush outputs per batch, and the bound on a stop: SIGTERM/SIGINT end the process within it + 2 s, exit 4 if the broker kept the stop from finishing (nothing unacknowledged is committed) [default: 30].", envvar="FRAUDSCORE_DRAIN_TIMEOUT")] = None,
    watch: Annotated[Optional[bool], typer.Option("--watch/--no-watch", help="Reload the bundle (and the challenger) when their files change (SIGHUP always reloads).", envvar="FRAUDSCORE_WATCH")] = None,
    challenger: Annotated[Optional[Path], typer.Option(help="Shadow scoring: a second bundle scored on every batch with the same features (one more ONNX Runtime call a batch). Its version and score go in each result under \"challenger\" and in fraudscore_model_* metrics by model version; the decision, alerts and \"score\" stay the --bundle model's. Refused at start unless its feature specification and inputs are the bundle's; a challenger that fails later is counted and logged, never stops scoring (docs/operations.md, \"Shadow scoring\") [default: none].", envvar="FRAUDSCORE_CHALLENGER")] = None,
    kafka_property: _KafkaProperty = None,
    kafka_properties_file: _KafkaPropertiesFile = None,
    require_tls: Annotated[Optional[bool], typer.Option("--require-tls/--allow-plaintext", help="Refuse to start unless security.protocol is SSL or SASL_SSL with certificate verification on [default: allow-plaintext].", envvar="FRAUDSCORE_REQUIRE_TLS")] = None,
    input_mode: Annotated[Optional[str], typer.Option("--input", help="raw: messages are raw transactions (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT; `fraudscore schema`) and the features are computed here; features: messages carry the bundle's feature fields [default: raw when the bundle records a feature specification, else features].", envvar="FRAUDSCORE_INPUT")] = None,
    labels_topic: _LabelsTopic = None,
    no_labels: Annotated[Optional[bool], typer.Option("--no-labels", help="Raw mode without --labels-topic, on purpose: every TERMINAL_ID_RISK_* feature then reads 0 (no fraud is ever confirmed), which blinds the model's strongest inputs. Without this flag raw mode refuses to start with no labels topic.", envvar="FRAUDSCORE_NO_LABELS")] = None,
    emit_features: Annotated[Optional[bool], typer.Option("--emit-features/--no-emit-features", help="Raw mode: put the computed features in each result, under \"features\".", envvar="FRAUDSCORE_EMIT_FEATURES")] = None,
    allowed_lateness: Annotated[Optional[int], typer.Option(help="Raw mode: seconds a transaction may be older than the newest one of its partition and still be scored; older ones are dead-lettered as late [default: 86400].", envvar="FRAUDSCORE_ALLOWED_LATENESS")] = None,
    score_from: Annotated[Optional[str], typer.Option(help="Raw mode go-live backfill: transactions before this date or date and time (UTC, like TX_DATETIME) update the feature state but get no result and no alert (counted in fraudscore_backfilled_transactions_total); later ones are scored. Load history with `fraudscore replay --until` first (docs/raw-transactions.md, \"Going live\") [default: score everything].", envvar="FRAUDSCORE_SCORE_FROM")] = None,
    require_full_state: Annotated[Optional[bool], typer.Option("--require-full-state", help="Raw mode: /readyz answers 503 (saying what is short) until the feature state of every assigned partition covers 30 days of event time and the terminal table 37, the history the windows reach back. Without it the sidecar is ready once restored, and results scored on shorter history say \"state\":\"partial\" (counted, and logged) [default: off].", envvar="FRAUDSCORE_REQUIRE_FULL_STATE")] = None,
    state_topic: _StateTopic = None,
    snapshot_interval: Annotated[Optional[float], typer.Option(help="Raw mode with --state-topic: seconds between snapshots of changed state (also written when a partition is revoked and at exit) [default: 60].", envvar="FRAUDSCORE_SNAPSHOT_INTERVAL")] = None,
    assignment_strategy: Annotated[Optional[str], typer.Option(help="Consumer group assignor: cooperative-sticky (a rebalance moves only the partitions that move; the others keep scoring), range or roundrobin (eager: every rebalance revokes everything). Every member of a group must agree; moving a live group from eager to cooperative takes two rolling restarts (Kafka's upgrade path) [default: cooperative-sticky].", envvar="FRAUDSCORE_ASSIGNMENT_STRATEGY")] = None,
    group_instance_id: Annotated[Optional[str], typer.Option(help="Static group membership (group.instance.id), unique and stable per instance, e.g. the pod name: a restart within the session timeout gets its partitions back without a rebalance; with --workers, -wN is appended [default: none].", envvar="FRAUDSCORE_GROUP_INSTANCE_ID")] = None,
    config: _SidecarConfigFile = None,
    log_level: _LogLevel = "INFO",
) -> None:
    """Run the Kafka sidecar: score input batches, publish results, alerts and dead letters.

    In raw mode (the default for bundles that record their feature specification) each
    message is a raw transaction keyed by its CUSTOMER_ID; the bundle's features are computed
    here from per-customer windows (restored when a partition is assigned: from its
    snapshot in --state-topic and the input after it, or from the whole retained input)
    and a terminal table read from the input and --labels-topic (docs/raw-transactions.md).

    Settings come from flags, then FRAUDSCORE_* environment variables, then --config, then
    defaults. librdkafka properties: -X, then FRAUDSCORE_KAFKA_<NAME> variables
    (FRAUDSCORE_KAFKA_SASL_PASSWORD -> sasl.password), then --kafka-properties-file, then the
    [kafka] table of --config; secret values are never printed. Exit codes: 0 after
    SIGTERM/SIGINT (batch in flight finished and committed), 2 bad configuration or bundle,
    3 broker unreachable, credentials or certificate refused, or topics missing.

    --workers N runs N sidecar processes in the group under a supervisor that restarts
    the ones that die (docs/sidecar.md, "Workers").
    """
    from fraudscore.serving.sidecar import Sidecar, SidecarConfig, configure_logging, install_signal_handlers

    configure_logging(log_level)
    flags = {
        "bundle": bundle, "bootstrap_servers": bootstrap_servers, "input_topic": input_topic,
        "output_topic": output_topic, "alerts_topic": alerts_topic, "dlq_topic": dlq_topic, "group_id": group_id,
        "metrics_port": metrics_port, "metrics_host": metrics_host, "batch_size": batch_size,
        "batch_wait_ms": batch_wait_ms, "poll_timeout_s": poll_timeout, "pipelining": pipelining,
        "commit_interval_s": commit_interval, "device": device, "threads": threads, "workers": workers,
        "exactly_once": exactly_once,
        "transactional_id": transactional_id, "offset_reset": offset_reset, "wait": wait,
        "startup_timeout_s": startup_timeout, "drain_timeout_s": drain_timeout, "watch": watch,
        "challenger": None if challenger is None else str(challenger),
        "require_tls": require_tls, "input_mode": input_mode, "labels_topic": labels_topic, "no_labels": no_labels,
        "emit_features": emit_features, "allowed_lateness_s": allowed_lateness, "state_topic": state_topic,
        "score_from": score_from, "require_full_state": require_full_state, "snapshot_interval_s": snapshot_interval, "assignment_strategy": assignment_strategy,
        "group_instance_id": group_instance_id,
    }
    cfg = SidecarConfig.from_sources(flags, config_file=config, properties_file=kafka_properties_file,
                                     kafka_flags=kafka_property)
    if cfg.workers > 1:
        from fraudscore.serving.sidecar.workers import Supervisor

        supervisor = Supervisor(cfg, log_level)
        supervisor.install_signal_handlers()
        raise typer.Exit(supervisor.run())
    sidecar = Sidecar(cfg)
    install_signal_handlers(sidecar)
    raise typer.Exit(sidecar.run())


@app.command()
@reports_errors
def quality(
    bootstrap_servers: _SidecarBootstrap = None,
    output_topic: Annotated[Optional[str], typer.Option(help="The sidecars' results topic (`fraudscore run --output-topic`).", envvar="FRAUDSCORE_OUTPUT_TOPIC")] = None,
    labels_topic: Annotated[Optional[str], typer.Option(help="Fraud confirmations (TRANSACTION_ID, TERMINAL_ID, TX_DATETIME, TX_FRAUD=1; `fraudscore schema --input labels`).", envvar="FRAUDSCORE_LABELS_TOPIC")] = None,
    delay: Annotated[int, typer.Option(min=0, help="Confirmation delay, seconds: a day of event time is evaluated once every results partition has been read this long past its end; a transaction not confirmed by then counts as genuine [default: 7 days, the handbook's].", envvar="FRAUDSCORE_QUALITY_DELAY")] = 7 * 86_400,
    top_k: Annotated[int, typer.Option(min=1, help="k of card precision@k: the cards with the highest score each day.", envvar="FRAUDSCORE_QUALITY_TOP_K")] = 100,
    metrics_port: Annotated[int, typer.Option(help="Port of /metrics, /healthz, /readyz (200 once caught up).", envvar="FRAUDSCORE_QUALITY_METRICS_PORT")] = 9465,
    metrics_host: Annotated[str, typer.Option(help="Address to bind the metrics port.", envvar="FRAUDSCORE_METRICS_HOST")] = "127.0.0.1",
    kafka_property: Annotated[Optional[list[str]], typer.Option("-X", "--kafka-property", help="Any librdkafka property, key=value (repeat); secrets: FRAUDSCORE_KAFKA_* variables.")] = None,
    log_level: _LogLevel = "INFO",
) -> None:
    """Live model quality: join the results topic with the confirmations on the labels topic and
    export, per model version (champion and --challenger alike), precision and recall at each
    model's threshold and card precision@k per day of event time, once the day is older than
    --delay (docs/operations.md, "Live model quality").

    One instance per results topic is enough (it reads every partition, without a consumer
    group). It holds the results of the days not evaluated yet, and on a restart reads the
    topics again from --delay plus two days back (by Kafka timestamp): a day that had matured
    before the restart sets the last-day gauges and is not counted again. Exit codes: 0 after
    SIGTERM/SIGINT, 2 bad flags, 3 broker unreachable or topics missing.
    """
    import os
    import signal

    from fraudscore.serving.metrics import HealthServer
    from fraudscore.serving.quality import DAY_S
    from fraudscore.serving.quality_monitor import QualityMetrics, QualityMonitor
    from fraudscore.serving.sidecar import configure_logging
    from fraudscore.serving.sidecar.config import kafka_environment, parse_kafka_flags

    for name, value in (("--bootstrap-servers", bootstrap_servers), ("--output-topic", output_topic),
                        ("--labels-topic", labels_topic)):
        if not value:
            raise UsageError(f"{name} is required (flag or FRAUDSCORE_{name[2:].upper().replace('-', '_')})")
    configure_logging(log_level)
    kafka = kafka_environment(os.environ) | parse_kafka_flags(kafka_property or []) | {"bootstrap.servers": bootstrap_servers}
    metrics = QualityMetrics()
    monitor = QualityMonitor(kafka, output_topic, labels_topic, delay, top_k, history_s=delay + 2 * DAY_S, metrics=metrics)
    http = HealthServer(metrics_host, metrics_port, metrics.registry, lambda: monitor.caught_up)
    signal.signal(signal.SIGTERM, monitor.request_stop)
    signal.signal(signal.SIGINT, monitor.request_stop)
    try:
        raise typer.Exit(monitor.run())
    finally:
        http.close()


@app.command()
@reports_errors
def schema(
    bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help="Bundle directory: its input mode and feature fields.")] = None,
    input_mode: Annotated[Optional[str], typer.Option("--input", help="raw, features or labels [default: the bundle's default input mode; raw without --bundle].")] = None,
) -> None:
    """Print the JSON Schema of input messages, for producers to validate against.

    raw: the raw transaction of raw mode; features: the bundle's feature fields (feature
    mode); labels: a fraud confirmation on the labels topic.
    """
    import json

    from fraudscore.serving.transactions import label_json_schema, raw_json_schema

    manifest = None
    if bundle is not None:
        from fraudscore.serving.bundle import load_bundle

        manifest = load_bundle(bundle).manifest
    mode = input_mode or ("raw" if manifest is None or manifest.feature_spec else "features")
    if mode == "raw":
        out = raw_json_schema()
    elif mode == "labels":
        out = label_json_schema()
    elif mode == "features":
        if manifest is None:
            raise UsageError("--input features needs --bundle (the feature fields come from its manifest)")
        from fraudscore.serving.decode import feature_json_schema

        # The amount rule holds where the bundle records its feature specification (as `run` decodes).
        out = feature_json_schema(manifest.features, amount_rule=bool(manifest.feature_spec))
    else:
        raise UsageError(f"--input must be raw, features or labels, got {mode!r}")
    typer.echo(json.dumps(out, indent=2))


@app.command()
@reports_errors
def replay(
    bootstrap_servers: Annotated[str, typer.Option(help="Kafka bootstrap servers.", envvar="FRAUDSCORE_BOOTSTRAP_SERVERS")],
    input_path: Annotated[Optional[Path], typer.Option("--in", "-i", help="Raw transactions with TX_FRAUD (.csv, .csv.gz, .parquet); default: simulate them.")] = None,
    input_topic: Annotated[str, typer.Option(help="Where transactions go, keyed by CUSTOMER_ID.", envvar="FRAUDSCORE_INPUT_TOPIC")] = "tx-in",
    labels_topic: Annotated[str, typer.Option(help="Where fraud confirmations go.", envvar="FRAUDSCORE_LABELS_TOPIC")] = "tx-labels",
    speedup: Annotated[float, typer.Option(min=0, help="Event-time seconds per wall second; 0 sends as fast as possible.")] = 0.0,
    customers: Annotated[int, typer.Option(min=1, help="Without --in: customers to simulate.")] = 500,
    terminals: Annotated[int, typer.Option(min=1, help="Without --in: terminals to simulate.")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Without --in: days to simulate.")] = 60,
    start: Annotated[str, typer.Option(help="Without --in: first day, YYYY-MM-DD.")] = "2018-04-01",
    seed: Annotated[int, typer.Option(min=0, help="Simulation seed and confirmation delays.")] = 0,
    delay_days: Annotated[int, typer.Option(min=1, help="Confirmations arrive up to this many days after the transaction.")] = 7,
    from_: Annotated[Optional[str], typer.Option("--from", help="Send only messages at or after this date or date and time (UTC): transactions by their TX_DATETIME, confirmations by when they are confirmed.")] = None,
    until: Annotated[Optional[str], typer.Option(help="Send only messages before this date or date and time (UTC). `--until T` then `--from T` (same file, same --seed) send every message exactly once.")] = None,
    kafka_property: _KafkaProperty = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines and no summary.")] = False,
) -> None:
    """Produce a raw transaction stream and its delayed fraud confirmations to Kafka, in event-time order.

    The input for `fraudscore run --input raw --labels-topic ...`: each transaction keyed by
    its CUSTOMER_ID, each fraud confirmed up to --delay-days later on the labels topic. With
    --speedup each message is sent when its event time comes, not in bursts. A progress line
    goes to stderr every 10 s. For a go-live backfill (history first, then the live days,
    with `run --score-from`), see docs/raw-transactions.md.
    """
    from fraudscore.data.replay import raw_stream, replay as run_replay

    if input_path is not None:
        from fraudscore.data.table import read_table

        table = read_table(input_path)
    else:
        from fraudscore.data.simulate import simulate as run_simulation

        table = run_simulation(customers=customers, terminals=terminals, days=days,
                               start=parse_date(start, "--start"), seed=seed).transactions
    from fraudscore.serving.sidecar.clients import quiet_repeats
    from fraudscore.serving.sidecar.config import parse_kafka_flags

    quiet_repeats()  # a fresh broker's "Coordinator load in progress" is expected, not a warning

    kafka = {"bootstrap.servers": bootstrap_servers} | parse_kafka_flags(kafka_property or [])
    start_s = parse_instant(from_, "--from") if from_ is not None else None
    end_s = parse_instant(until, "--until") if until is not None else None
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise UsageError(f"--until ({until}) must come after --from ({from_})")
    everything = raw_stream(table, delay_days=delay_days, seed=seed)
    events = everything.between(start_s, end_s)
    span = f"{iso_time(int(everything.seconds.min()))} to {iso_time(int(everything.seconds.max()))}" if len(everything) else "nothing"
    if not len(events):
        raise UsageError(f"replay: no message between {from_ or 'the start'} and {until or 'the end'}; "
                         f"the stream spans {span} (confirmations included)")
    labels = int(events.is_label.sum())
    throttle = Throttle(10.0)

    def progress(sent: int, wall_s: float) -> None:
        if not quiet and throttle.due():
            say(f"replay: {sent:,} of {len(events):,} messages sent ({sent / len(events):.0%}), event time "
                f"{iso_time(int(events.seconds[sent - 1]))}, {wall_s:.0f} s")

    seconds = run_replay(events, kafka, input_topic, labels_topic, speedup=speedup, progress=progress)
    if not quiet:
        window = f" (event time {iso_time(int(events.seconds[0]))} to {iso_time(int(events.seconds[-1]))})"
        report(f"sent {len(events) - labels:,} transactions to {input_topic} and {labels:,} confirmations to "
            f"{labels_topic} in {seconds:.1f} s{window}")


dlq_app = typer.Typer(name="dlq", help="Read the dead-letter topic and replay dead letters after a fix.",
                      no_args_is_help=True, rich_markup_mode=None)
app.add_typer(dlq_app)
# Connection and selection options shared by `dlq show` and `dlq replay`.
_DlqTopic = Annotated[Optional[str], typer.Option(help="The dead-letter topic [default: dlq_topic of --config].", envvar="FRAUDSCORE_DLQ_TOPIC")]
_Reason = Annotated[Optional[list[str]], typer.Option("--reason", help="Only dead letters with this fraudscore.reason (repeat): bad_json, missing_field, late ...")]
_Partition = Annotated[Optional[list[int]], typer.Option("--partition", help="Only this partition of the dead-letter topic (repeat).")]
_FromOffset = Annotated[Optional[int], typer.Option(min=0, help="First dead-letter offset to read, in each partition read.")]
_ToOffset = Annotated[Optional[int], typer.Option(min=0, help="Last dead-letter offset to read (inclusive), in each partition read.")]
_Since = Annotated[Optional[str], typer.Option(help="Only dead letters written since: 2026-11-29T10:00:00 (UTC unless an offset is given) or 30m, 2h, 1d back.")]
_Limit = Annotated[Optional[int], typer.Option(min=1, help="At most this many dead letters (the first ones).")]
_Timeout = Annotated[float, typer.Option(min=0.1, help="Seconds to reach the broker, and the longest read stall.")]
_KafkaX = Annotated[Optional[list[str]], typer.Option("-X", "--kafka-property", help="Any librdkafka property, key=value (repeat), as for run. Keep secrets out of flags: FRAUDSCORE_KAFKA_* variables or --kafka-properties-file.")]
_KafkaFile = Annotated[Optional[Path], typer.Option(help="File of librdkafka properties, key=value lines (# comments).", envvar="FRAUDSCORE_KAFKA_PROPERTIES_FILE")]
_Config = Annotated[Optional[Path], typer.Option("--config", help="The sidecar's TOML file: bootstrap_servers, dlq_topic and its [kafka] table are used.", envvar="FRAUDSCORE_CONFIG")]


def _dead_letters(dlq_topic: Optional[str], bootstrap_servers: Optional[str], reason: Optional[list[str]],
                  partition: Optional[list[int]], from_offset: Optional[int], to_offset: Optional[int],
                  since: Optional[str], limit: Optional[int], timeout: float, kafka_property: Optional[list[str]],
                  kafka_properties_file: Optional[Path], config: Optional[Path]) -> tuple[dict, str, list]:
    """(kafka settings, topic, selected dead letters) from the options `dlq show` and `dlq replay` share."""
    from fraudscore.serving.dlq import Selection, connection, dlq_topic_from, parse_since, read_dead_letters

    kafka = connection(bootstrap_servers=bootstrap_servers, config_file=config,
                       properties_file=kafka_properties_file, kafka_flags=kafka_property)
    topic = dlq_topic_from(dlq_topic, config)
    if from_offset is not None and to_offset is not None and to_offset < from_offset:
        raise UsageError("--to-offset must not be below --from-offset")
    selection = Selection(reasons=frozenset(reason or ()), partitions=frozenset(partition or ()),
                          from_offset=from_offset, to_offset=to_offset, since_ms=parse_since(since), limit=limit)
    return kafka, topic, read_dead_letters(kafka, topic, selection, timeout_s=timeout)


@dlq_app.command("show")
@reports_errors
def dlq_show(
    dlq_topic: _DlqTopic = None, bootstrap_servers: _SidecarBootstrap = None, reason: _Reason = None,
    partition: _Partition = None, from_offset: _FromOffset = None, to_offset: _ToOffset = None, since: _Since = None,
    limit: _Limit = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object a dead letter (every header, the whole value) for scripts.")] = False,
    payload_chars: Annotated[int, typer.Option(min=0, help="Characters of each value to print on a line (0: all); --json prints whole values.")] = 120,
    timeout: _Timeout = 30.0, kafka_property: _KafkaX = None, kafka_properties_file: _KafkaFile = None,
    config: _Config = None,
) -> None:
    """Print the dead letters: one line each with partition@offset, time, reason, source
    topic/partition/offset, key, detail and the start of the value (--json: JSON Lines).

    Reads the topic from the beginning (or --from-offset / --since) up to its end offsets
    at the start, without a consumer group: nothing is committed, nothing moves for the
    sidecars. A count per reason goes to stderr. Exit codes: 0 done (also when none
    matched), 2 bad options, 3 broker or topic unreachable.
    """
    import collections
    import json

    _, topic, letters = _dead_letters(dlq_topic, bootstrap_servers, reason, partition, from_offset, to_offset,
                                      since, limit, timeout, kafka_property, kafka_properties_file, config)
    for letter in letters:
        typer.echo(json.dumps(letter.to_json()) if json_lines else letter.line(payload_chars or 10**9))
    counts = collections.Counter(letter.reason or "?" for letter in letters)
    truncated = sum(letter.truncated is not None for letter in letters)
    say(f"{len(letters):,} dead letters in {topic}" + (": " + ", ".join(f"{r} {n:,}" for r, n in counts.most_common()) if counts else "")
        + (f"; {truncated:,} truncated (their full messages are at their source offsets)" if truncated else ""))


@dlq_app.command("replay")
@reports_errors
def dlq_replay(
    dlq_topic: _DlqTopic = None, bootstrap_servers: _SidecarBootstrap = None, reason: _Reason = None,
    partition: _Partition = None, from_offset: _FromOffset = None, to_offset: _ToOffset = None, since: _Since = None,
    limit: _Limit = None,
    to: Annotated[Optional[str], typer.Option("--to", help="Send to this topic, partitioned by key [default: each dead letter's source topic and partition].")] = None,
    execute: Annotated[bool, typer.Option("--execute/--dry-run", help="Send; the default only counts what would be sent.")] = False,
    timeout: _Timeout = 30.0, kafka_property: _KafkaX = None, kafka_properties_file: _KafkaFile = None,
    config: _Config = None,
) -> None:
    """Re-produce selected dead letters' original values and keys to the input topic, after the
    producer or the bundle was fixed.

    A dry run by default: it prints what would go where; --execute sends, waits for every
    acknowledgement, and prints counts and the dead-letter offsets replayed (keep them: a
    second run with the same selection sends the same messages again; --from-offset applies to
    every partition, so go on partition by partition with the printed --partition P
    --from-offset LAST+1). Each replayed message carries a fraudscore.replayed.from header
    (dlq-topic/partition/offset). Dead letters whose value or key was truncated are never
    replayed; they are listed with the source offset of the full message. Exit codes: 0
    done, 2 bad options, 3 broker or topic unreachable or a send not acknowledged.
    """
    from fraudscore.serving.dlq import replay as replay_letters

    kafka, topic, letters = _dead_letters(dlq_topic, bootstrap_servers, reason, partition, from_offset, to_offset,
                                          since, limit, timeout, kafka_property, kafka_properties_file, config)
    sent = replay_letters(kafka, letters, topic, to_topic=to, execute=execute, timeout_s=max(timeout, 60.0))
    for line in sent.lines(topic):
        typer.echo(line)


@app.command("results")
@reports_errors
def results(
    input_topic: Annotated[Optional[str], typer.Option(help="The sidecar's input topic [default: input_topic of --config].", envvar="FRAUDSCORE_INPUT_TOPIC")] = None,
    output_topic: Annotated[Optional[str], typer.Option(help="Its scores topic [default: output_topic of --config].", envvar="FRAUDSCORE_OUTPUT_TOPIC")] = None,
    dlq_topic: _DlqTopic = None, bootstrap_servers: _SidecarBootstrap = None,
    since: Annotated[Optional[str], typer.Option(help="Only inputs written since (Kafka timestamp): 2026-11-29T10:00:00 (UTC unless an offset is given) or 30m, 2h, 1d back [default: the first retained].")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only inputs written before, in the same forms [default: now].")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="The report as one JSON object, for scripts.")] = False,
    timeout: _Timeout = 30.0, kafka_property: _KafkaX = None, kafka_properties_file: _KafkaFile = None,
    config: _Config = None,
) -> None:
    """Reconcile the input topic with the scores and dead-letter topics: each input message
    in the range is scored (a result carries its transaction id), dead-lettered (a dead
    letter names its partition and offset) or missing; results beyond one per input are
    duplicates (at least once), counted per transaction; alerts are counted too.

    Run it once the sidecars have caught up (fraudscore_consumer_lag 0): an input still
    queued counts as missing. Reads every topic without a consumer group, `read_committed`,
    up to the end offsets seen at the start. Exit codes: 0 every input has an outcome,
    1 some are missing (listed, the first 10), 2 bad options, 3 broker or topic unreachable.
    """
    import json

    from fraudscore.serving.dlq import connection, parse_since
    from fraudscore.serving.results import Topics, reconcile
    from fraudscore.serving.sidecar.config import read_config_file

    kafka = connection(bootstrap_servers=bootstrap_servers, config_file=config,
                       properties_file=kafka_properties_file, kafka_flags=kafka_property)
    file = read_config_file(config) if config else {}
    names = {}
    for key, flag, value in (("input_topic", "--input-topic", input_topic), ("output_topic", "--output-topic", output_topic),
                             ("dlq_topic", "--dlq-topic", dlq_topic)):
        names[key] = value or file.get(key)
        if not names[key]:
            raise UsageError(f"missing {flag} (flag, FRAUDSCORE_{key.upper()} or --config)")
    outcome = reconcile(kafka, Topics(str(names["input_topic"]), str(names["output_topic"]), str(names["dlq_topic"])),
                       since_ms=parse_since(since), until_ms=parse_since(until, flag="--until"), timeout_s=timeout)
    if json_out:
        typer.echo(json.dumps(outcome.to_json()))
    else:
        for line in outcome.lines():
            typer.echo(line)
    if not outcome.complete:
        raise typer.Exit(1)


topics_app = typer.Typer(name="topics", help="The sidecar's Kafka topics.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(topics_app)


@topics_app.command("create")
@reports_errors
def topics_create(
    bootstrap_servers: _SidecarBootstrap = None,
    input_topic: _InputTopic = None,
    output_topic: _OutputTopic = None,
    alerts_topic: _AlertsTopic = None,
    dlq_topic: _SidecarDlqTopic = None,
    labels_topic: _LabelsTopic = None,
    input_mode: Annotated[Optional[str], typer.Option("--input", help="raw or features, as for run: features keeps the input topic 7 days instead of raw mode's 39 [default: raw's retention].", envvar="FRAUDSCORE_INPUT")] = None,
    allowed_lateness: Annotated[Optional[int], typer.Option(help="Raw mode: the sidecar's --allowed-lateness in seconds; the input and labels topics keep it on top of the windows' 37 days [default: 86400].", envvar="FRAUDSCORE_ALLOWED_LATENESS")] = None,
    state_topic: _StateTopic = None,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of every topic; the input's count bounds how many sidecars share the work. Fix it now: changing it later moves customers between partitions.")] = 1,
    replication_factor: Annotated[int, typer.Option(min=1, help="Replicas of each partition (3 on a production cluster; at most the number of brokers).")] = 1,
    startup_timeout: Annotated[Optional[float], typer.Option(help="Seconds to reach the broker [default: 15].", envvar="FRAUDSCORE_STARTUP_TIMEOUT")] = None,
    kafka_property: _KafkaProperty = None,
    kafka_properties_file: _KafkaPropertiesFile = None,
    config: _SidecarConfigFile = None,
) -> None:
    """Create the sidecar's topics: input, scores, alerts, dead letters, and labels when configured.

    Takes the topic and connection settings of `fraudscore run` from the same flags,
    FRAUDSCORE_* variables and --config file (run's other settings there are ignored).
    Idempotent: topics that exist are reported and left as they are; an existing topic
    with another partition count is refused before anything is created. Retention: input
    and labels 37 days + --allowed-lateness + 1 day (raw mode rebuilds its state from
    them), scores and alerts 7 days, dead letters 30 days; cleanup.policy=delete on all
    (none holds keyed state). Exit codes: 0 done, 2 bad settings or a topic that cannot
    serve (partition count, replication factor, authorisation), 3 broker unreachable.
    With --state-topic also the snapshot topics (STATE_TOPIC with the input's partitions,
    STATE_TOPIC-index with one): cleanup.policy=compact,delete, the input's retention.
    """
    from fraudscore.serving.topics import TopicsConfig, ensure_topics, plan_topics

    flags = {"bootstrap_servers": bootstrap_servers, "input_topic": input_topic, "output_topic": output_topic,
             "alerts_topic": alerts_topic, "dlq_topic": dlq_topic, "labels_topic": labels_topic,
             "input_mode": input_mode, "allowed_lateness_s": allowed_lateness, "startup_timeout_s": startup_timeout,
             "state_topic": state_topic}
    cfg = TopicsConfig.from_sources(flags, config_file=config, properties_file=kafka_properties_file,
                                    kafka_flags=kafka_property)
    outcome = ensure_topics(cfg, plan_topics(cfg, partitions, replication_factor))
    for line in outcome.lines():
        (say if line.lstrip().startswith("warning:") else report)(line)


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
