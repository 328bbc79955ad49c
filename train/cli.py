"""`fraudscore train`: registered on the command line by the `fraudscore.commands` entry point.

This module stays light (Typer only): TensorFlow and Keras are imported inside the command, so
`fraudscore --help` answers at once and the runtime package never imports this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fraudscore.errors import UsageError
from fraudscore.console import int_list, parse_date, report, reports_errors, say



def register(app: typer.Typer) -> None:
    """Add `fraudscore train` to the command line."""
    app.command(name="train")(reports_errors(train))
    app.command(name="compare")(reports_errors(compare))


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
    features: Annotated[str, typer.Option(help="Comma-separated feature columns, in model order; default: those of the table's feature version (the 15 baseline features, or 21 for `features --feature-version 2`).")] = "",
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


def compare(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to create: compare.json, compare.md, pr_curves.png, one draw-SEED/ with its bundles per draw.")],
    draws: Annotated[int, typer.Option(min=2, help="Simulation draws (K): simulator seeds --first-seed, --first-seed + 1, ...")] = 5,
    first_seed: Annotated[int, typer.Option(min=0, help="Simulator seed of the first draw.")] = 0,
    start: Annotated[str, typer.Option(help="First training day, YYYY-MM-DD (train 7 days, delay 7, test 7).")] = "2018-07-25",
    customers: Annotated[int, typer.Option(min=1, help="Customers per draw (the reference size: 5000).")] = 5_000,
    terminals: Annotated[int, typer.Option(min=1, help="Terminals per draw (the reference size: 10000).")] = 10_000,
    days: Annotated[int, typer.Option(min=1, help="Days simulated per draw.")] = 183,
    feature_version: Annotated[int, typer.Option(help="The features computed per draw (`fraudscore features --feature-version`): 1, the handbook's 15; 2, those, customer amount ratios and terminal fraud counts (21).")] = 1,
    features: Annotated[str, typer.Option(help="Comma-separated model inputs, for every model; default: every feature of --feature-version.")] = "",
    model_seed: Annotated[int, typer.Option(min=0, help="Seed of every model (the networks, LightGBM, the isolation forest).")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs of each network (train's --epochs).")] = 60,
    patience: Annotated[int, typer.Option(min=1, help="train's --patience.")] = 8,
    unsupervised: Annotated[bool, typer.Option(help="Also the autoencoder against an isolation forest.")] = True,
    keep_data: Annotated[bool, typer.Option(help="Keep each draw's feature table and Keras runs (about 60 MB a draw).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress; the table still prints.")] = False,
) -> None:
    """Our models against gradient-boosted trees over K simulation draws, under the handbook's protocol.

    Per draw: simulate, features, then train and score mlp (through its ONNX bundle) and
    LightGBM on the same features, and the autoencoder against an isolation forest. Prints
    mean ± sd of AUC, AP and CP@100 per model and the paired differences per draw. Needs
    the train and dev extras (LightGBM, scikit-learn). About 1.5 minutes a draw at the
    reference size on 2 cores."""
    from fraudscore.features.spec import SPECS
    from fraudscore.train.compare import CompareConfig, compare as run_compare, markdown

    if feature_version not in SPECS:
        raise UsageError(f"--feature-version {feature_version}: this fraudscore computes versions {', '.join(map(str, SPECS))}")
    feature_list = tuple(f.strip() for f in features.split(",") if f.strip())
    config = CompareConfig(out=out, draws=draws, first_seed=first_seed, start=parse_date(start, "--start"),
                           customers=customers, terminals=terminals, days=days, spec=SPECS[feature_version], features=feature_list,
                           model_seed=model_seed, epochs=epochs, patience=patience, unsupervised=unsupervised,
                           keep_data=keep_data)
    result = run_compare(config, say=(lambda message: None) if quiet else say)
    report(markdown(result) + f"\n{config.draws} draws in {result['seconds']:.0f} s; wrote {out}")
