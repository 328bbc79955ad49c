"""`fraudscore train`: registered on the command line by the `fraudscore.commands` entry point.

This module stays light (Typer only): TensorFlow and Keras are imported inside the command, so
`fraudscore --help` answers at once and the runtime package never imports this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fraudscore.console import int_list, parse_date, report, reports_errors, say



def register(app: typer.Typer) -> None:
    """Add `fraudscore train` to the command line."""
    app.command(name="train")(reports_errors(train))


def train(
    data: Annotated[Path, typer.Option("--data", "-d", help="Feature table (.csv, .csv.gz, .parquet) from `fraudscore features`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    start: Annotated[str, typer.Option(help="First training day, YYYY-MM-DD.")],
    model: Annotated[str, typer.Option(help="mlp (supervised) or autoencoder (genuine only; score = reconstruction error).")] = "mlp",
    train_days: Annotated[int, typer.Option(min=2, help="Days in the training window.")] = 7,
    delay_days: Annotated[int, typer.Option(min=0, help="Days between training and test (labels arrive late).")] = 7,
    test_days: Annotated[int, typer.Option(min=1, help="Days in the test window.")] = 7,
    val_days: Annotated[int, typer.Option(min=1, help="Last days of the training window held out for early stopping and the threshold.")] = 1,
    seed: Annotated[int, typer.Option(min=0, help="Random seed; the same seed gives the same model and metrics.")] = 0,
    features: Annotated[str, typer.Option(help="Comma-separated feature columns, in model order; default: the 15 baseline features.")] = "",
    label: Annotated[str, typer.Option(help="Label column (0/1).")] = "TX_FRAUD",
    time_column: Annotated[str, typer.Option(help="Timestamp column.")] = "TX_DATETIME",
    customer_column: Annotated[str, typer.Option(help="Card/customer column (for card precision and known-card removal).")] = "CUSTOMER_ID",
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs; early stopping on validation AP usually ends sooner.")] = 60,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without a better validation AP before stopping.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    learning_rate: Annotated[float, typer.Option()] = 1e-3,
    hidden: Annotated[str, typer.Option(help="Hidden layer widths, e.g. 64,32 (mlp) or 32,8 (autoencoder encoder).")] = "",
    class_weight: Annotated[float, typer.Option(help="Weight of a fraud in the loss relative to a genuine transaction (mlp).")] = 1.0,
    ensemble: Annotated[
        Optional[int], typer.Option(min=1, help="Average this many independently seeded models in one graph [default: 3 for mlp, 1 for autoencoder].")
    ] = None,
    target_precision: Annotated[Optional[float], typer.Option(help="Alert threshold: lowest with this precision on validation.")] = None,
    daily_alert_budget: Annotated[float, typer.Option(help="Alert threshold: at most this many alerts a day on validation (default rule).")] = 100.0,
    log_every: Annotated[float, typer.Option(min=0, help="When stderr is not a terminal (CI, nohup): seconds between epoch lines, besides each member's first and last; 0: every epoch. On a terminal every epoch shows.")] = 10.0,
    mlflow_uri: Annotated[str, typer.Option(
        "--mlflow-uri", envvar="FRAUDSCORE_MLFLOW_URI",
        help="Log the run (parameters, metrics per split, data fingerprint, the run directory as artefacts) to this "
             "MLflow tracking server, e.g. http://127.0.0.1:5000; needs the `tracking` extra. The run id goes to "
             "the run directory's tracking.json and, through export, into the bundle's manifest.")] = "",
    mlflow_experiment: Annotated[str, typer.Option(help="MLflow experiment of the run (created if missing).")] = "fraudscore",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no summary; warnings still show.")] = False,
) -> None:
    """Train a Keras model on a feature table with the handbook's time split; write a run directory.

    Progress (epoch, loss, validation AP of each ensemble member) goes to stderr: every
    epoch on a terminal, at most one line per --log-every seconds otherwise."""
    from fraudscore.progress import progress_wanted

    from fraudscore.train.trainer import TrainConfig, train as run_training

    if mlflow_uri:
        from fraudscore.tracking import check_server

        check_server(mlflow_uri)  # before training, not after it
    feature_list = tuple(f.strip() for f in features.split(",") if f.strip())
    config = TrainConfig(
        data=data,
        out=out,
        start=parse_date(start, "--start"),
        model=model,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
        val_days=val_days,
        seed=seed,
        label=label,
        time_column=time_column,
        customer_column=customer_column,
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        learning_rate=learning_rate,
        hidden=int_list(hidden, "--hidden"),
        class_weight=class_weight,
        ensemble=ensemble,
        target_precision=target_precision,
        daily_alert_budget=None if target_precision is not None else daily_alert_budget,
        **({"features": feature_list} if feature_list else {}),
    )
    # Off a terminal (CI, nohup, a pipe) the lines are throttled rather than dropped: a
    # minute-long silence there looks like a hang.
    result = run_training(config, say=(lambda message: None) if quiet else say,
                          every_s=0.0 if progress_wanted() else log_every, warn=say)
    test = result.metrics["test"]
    if not quiet:
        report(
            f"{model}: test AUC {test['auc']:.4f}, AP {test['ap']:.4f}, CP@100 {test['cp_at_100']:.4f} "
            f"({test['transactions']:,} transactions, {test['frauds']:,} frauds); threshold "
            f"{result.metrics['threshold']['value']:.4g}; wrote {result.path} in {result.seconds:.1f} s"
        )
    if mlflow_uri:
        from fraudscore.tracking import log_training_run

        record = log_training_run(mlflow_uri, mlflow_experiment, result.path)
        if not quiet:
            report(f"logged to MLflow: experiment {record['experiment']!r} ({record['experiment_id']}), "
                   f"run {record['run_id']} at {mlflow_uri}")
