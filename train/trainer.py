"""The `train` job: feature table -> time split -> Keras model -> run directory.

Split per the handbook's protocol (fraudscore.data.evaluation): the training window's last
`val_days` days are held out, by time, for early stopping and for choosing the alert
threshold; the test days (after the delay, known compromised cards removed) are used
only for the reported metrics. Early stopping keeps the weights of the epoch with the
best validation average precision.

The run directory is written under a temporary name and renamed into place at the
end, so a failed run never leaves a directory that looks complete.
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter is noise for a CLI; set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import dataclasses
import datetime as dt
import json
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudscore import InputError, UsageError, __version__, read_table
from fraudscore.atomic import check_new_directory, new_directory
from fraudscore.data.fingerprint import fingerprint, score_reference
from fraudscore.data.evaluation import (
    Split,
    average_precision,
    classification_at,
    day_index,
    evaluate_scores,
    precision_recall_curve,
    split_masks,
    threshold_for_budget,
    threshold_for_precision,
)
from fraudscore.data.matrix import feature_matrix
from fraudscore.features.baseline import recorded_spec
from fraudscore.features.spec import BASELINE_SPEC, FeatureSpec, resolution_name
from fraudscore.progress import Throttle
from fraudscore.data.table import Table

MODELS = ("mlp", "autoencoder")
HOLDOUT_ROWS = 5_000


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    start: dt.date
    model: str = "mlp"
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7
    val_days: int = 1
    seed: int = 0
    features: tuple[str, ...] = ()
    """Model inputs in order; empty: every feature of the table's recorded specification (the
    handbook's 15 for a version-1 table or a CSV, 21 for version 2)."""
    label: str = "TX_FRAUD"
    time_column: str = "TX_DATETIME"
    customer_column: str = "CUSTOMER_ID"
    epochs: int = 60
    patience: int = 8
    batch_size: int = 256
    learning_rate: float = 1e-3
    hidden: tuple[int, ...] = ()
    dropout: float = 0.2
    class_weight: float = 1.0
    ensemble: int | None = None  # None: 3 for mlp (measured: +0.005 AP), 1 for autoencoder
    target_precision: float | None = None
    daily_alert_budget: float | None = 100.0
    k: int = 100
    verbose: bool = False

    def validate(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if not 1 <= self.val_days < self.train_days:
            raise UsageError(f"--val-days must be at least 1 and less than --train-days ({self.train_days})")
        if self.target_precision is not None and not 0 < self.target_precision <= 1:
            raise UsageError("--target-precision must be in (0, 1]")
        if self.daily_alert_budget is not None and self.daily_alert_budget <= 0:
            raise UsageError("--daily-alert-budget must be positive")
        if self.epochs < 1 or self.batch_size < 1 or self.members < 1 or self.class_weight <= 0:
            raise UsageError("--epochs, --batch-size, --ensemble and --class-weight must be positive")


    @property
    def members(self) -> int:
        if self.ensemble is not None:
            return self.ensemble
        return 3 if self.model == "mlp" else 1


@dataclass(frozen=True)
class RunResult:
    path: Path
    metrics: dict
    seconds: float


def _seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    from .models import quiet_tensorflow

    quiet_tensorflow()
    keras.utils.set_random_seed(seed)
    # Same seed, same data, same machine -> same weights: deterministic kernels on CPU.
    tf.config.experimental.enable_op_determinism()


def member_seed(seed: int, member: int) -> int:
    """The seed of ensemble member `member` under `--seed seed`.

    `seed + member` would give member 1 of --seed 0 the weights of member 0 of --seed 1,
    so two "independent" runs would share networks; SeedSequence spawns streams that no
    neighbouring seed reproduces."""
    child = np.random.SeedSequence(seed).spawn(member + 1)[member]
    return int(child.generate_state(1, dtype=np.uint32)[0] % 2**31)


def _library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {
        "fraudscore": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def _fit_one(config: TrainConfig, x_fit, y_fit, x_val, y_val, member: int, say, throttle: Throttle) -> tuple[object, dict]:
    from .models import build_autoencoder, build_mlp

    _seed_everything(member_seed(config.seed, member))
    if config.model == "mlp":
        model = build_mlp(
            x_fit,
            hidden=config.hidden or (64, 32),
            dropout=config.dropout,
            learning_rate=config.learning_rate,
            name=f"mlp_{member}",
        )
        targets, weights = y_fit.astype(np.float32), {0: 1.0, 1: config.class_weight}
        fit_x = x_fit
    else:
        genuine = y_fit == 0
        fit_x = x_fit[genuine]
        model = build_autoencoder(
            fit_x, hidden=config.hidden or (32, 8), learning_rate=config.learning_rate, name=f"autoencoder_{member}"
        )
        targets, weights = np.zeros(len(fit_x), dtype=np.float32), None
    best = {"ap": -1.0, "epoch": -1, "weights": None}
    history = []
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        loss = model.fit(
            fit_x, targets, batch_size=config.batch_size, epochs=1, verbose=0, shuffle=True, class_weight=weights
        ).history["loss"][0]
        val_score = model.predict(x_val, batch_size=8192, verbose=0).reshape(-1)
        ap = average_precision(y_val, val_score)
        history.append({"epoch": epoch, "loss": float(loss), "val_ap": ap, "seconds": time.perf_counter() - t0})
        if ap > best["ap"]:
            best = {"ap": ap, "epoch": epoch, "weights": model.get_weights()}
        last = epoch - best["epoch"] >= config.patience or epoch + 1 == config.epochs
        # The first and last epoch of each member always show; in between, at the throttle's rate.
        if throttle.due(force=epoch == 0 or last):
            say(f"member {member}: epoch {epoch + 1}/{config.epochs} loss {loss:.5f} val AP {ap:.4f} "
                f"(best {best['ap']:.4f} at epoch {best['epoch'] + 1})" + (", stopping" if last else ""))
        if last:
            break
    model.set_weights(best["weights"])
    return model, {"best_epoch": best["epoch"] + 1, "best_val_ap": best["ap"], "history": history}


def warm_up_warning(times: np.ndarray, start: dt.date, features: list[str], split_days: int = 0,
                    spec: FeatureSpec = BASELINE_SPEC) -> str:
    """A warning when the training window starts before the online features' windows could fill:
    their first rows then see less history than production gives them (customer windows reach
    30 days back, terminal windows 37 with the label delay), "" when it does not. `split_days`
    (training, delay and test) tells whether the data covers a split from the first full day."""
    windowed = set(features) & set(spec.names)
    customer = any(name.startswith("CUSTOMER_ID_") for name in windowed)
    terminal = any(name.startswith("TERMINAL_ID_") for name in windowed)
    reach_s = max(spec.terminal_reach_s if terminal else 0, spec.customer_reach_s if customer else 0)
    if not reach_s or not len(times):
        return ""
    first = times.min().astype("datetime64[D]")  # the data's first day: nothing before it was recorded
    since_s = int((np.datetime64(start, "s") - first).astype(np.int64))
    if since_s >= reach_s:
        return ""
    full = first + np.timedelta64(-(-reach_s // 86_400), "D")
    last = times.max().astype("datetime64[D]")
    days = int((last - first).astype(np.int64)) + 1
    short_data = (f"; the data covers {days} days ({first}..{last}), and a split of {split_days} days after the "
                  f"windows' {-(-reach_s // 86_400)} needs {-(-reach_s // 86_400) + split_days}"
                  if split_days and full + np.timedelta64(split_days - 1, "D") > last else "")
    what = (f"customer windows reach {spec.customer_reach_s // 86_400} days back, terminal windows "
            f"{-(-spec.terminal_reach_s // 86_400)} with the {spec.terminal_delay_days}-day label delay"
            + (f" and their ends rounded down to {resolution_name(spec.terminal_resolution_s)}"
               if spec.terminal_resolution_s != 1 else ""))
    return (f"warning: the training window starts {max(since_s, 0) / 86_400:.1f} days after the data's first day "
            f"({first}), so the features of its first rows saw less history than production "
            f"gives them ({what}) and the model learns from understated windows. Start on or after {full} (--start), "
            f"or compute the features over a longer history{short_data}")


def _check_training_data(config: TrainConfig, table: Table, train: np.ndarray, test: np.ndarray, fit: np.ndarray, val: np.ndarray) -> None:
    source = str(config.data)
    label = table[config.label]
    if label.dtype.kind not in "iub" and not (label.dtype.kind == "f" and np.isin(label, (0.0, 1.0)).all()):
        raise InputError(f"{source}: label column {config.label} must hold 0/1 integers, got {label.dtype}")
    bad = ~np.isin(label, (0, 1))
    if bad.any():
        raise InputError(f"{source}: label column {config.label}: {int(bad.sum())} rows are not 0 or 1; fix or drop them")
    split = Split(config.start, config.train_days, config.delay_days, config.test_days).describe()
    if not train.any():
        raise InputError(f"{source}: no rows in the training window {split['train']}; check --start and the data's dates")
    if not test.any():
        raise InputError(f"{source}: no rows in the test window {split['test']}; the data must cover it (check --start, --test-days)")
    if not fit.any() or not val.any():
        raise InputError(f"{source}: the training window needs rows both before and in its last {config.val_days} day(s)")
    if not (label[fit] == 1).any():
        raise InputError(f"{source}: no positives ({config.label} = 1) in the training window {split['train']}; a supervised model cannot learn")
    if config.model == "mlp" and not (label[val] == 1).any():
        raise InputError(f"{source}: no positives in the validation day(s) at the end of the training window; use more --train-days or --val-days")


def train(config: TrainConfig, say=lambda message: None, every_s: float = 0.0, warn=None) -> RunResult:
    """Run the whole job; returns the run directory and its metrics.

    `say` gets progress lines: the data's sizes, then each member's epochs (epoch, loss,
    validation AP): all of them with `every_s` 0, else at most one per `every_s` seconds
    besides each member's first and last. `warn` (default: `say`) gets warnings, which a
    quiet run still shows."""
    config.validate()
    out = Path(config.out)
    check_new_directory(out)
    started = time.perf_counter()
    table = read_table(config.data)
    # The specification `fraudscore features` recorded in the table (a CSV records none: the handbook's).
    spec = recorded_spec(config.data) or BASELINE_SPEC
    features = list(config.features or spec.names)
    matrix = feature_matrix(table, features, str(config.data))
    split = Split(config.start, config.train_days, config.delay_days, config.test_days)
    train_mask, test_mask = split_masks(
        table, split, time_column=config.time_column, customer_column=config.customer_column, label_column=config.label
    )
    day = day_index(table[config.time_column])
    first = int(np.datetime64(config.start, "D").astype(np.int64))
    val_mask = train_mask & (day >= first + config.train_days - config.val_days)
    fit_mask = train_mask & ~val_mask
    _check_training_data(config, table, train_mask, test_mask, fit_mask, val_mask)
    labels = (table[config.label] == 1).astype(np.int64)

    short = warm_up_warning(table[config.time_column], config.start, features,
                            config.train_days + config.delay_days + config.test_days, spec)
    if short:
        (warn or say)(short)
    say(f"training {config.model} on {int(fit_mask.sum()):,} rows ({int(labels[fit_mask].sum()):,} positives), "
        f"validating on {int(val_mask.sum()):,}, testing on {int(test_mask.sum()):,}")
    members, member_info = [], []
    throttle = Throttle(every_s)
    for member in range(config.members):
        model, info = _fit_one(config, matrix[fit_mask], labels[fit_mask], matrix[val_mask], labels[val_mask], member, say,
                               throttle)
        members.append(model)
        member_info.append(info)
    epochs = sum(len(info["history"]) for info in member_info)
    epoch_s = sum(h["seconds"] for info in member_info for h in info["history"]) / max(1, epochs)
    say(f"{epochs} epochs over {config.members} member(s), {epoch_s:.2f} s an epoch for {int(fit_mask.sum()):,} rows: an "
        "epoch's time grows in proportion to the rows of the training window (plus a fixed part, the validation "
        "day), and each member repeats it")
    from .models import ensemble

    model = ensemble(members)

    val_score = model.predict(matrix[val_mask], batch_size=8192, verbose=0).reshape(-1)
    test_score = model.predict(matrix[test_mask], batch_size=8192, verbose=0).reshape(-1)
    if config.target_precision is not None:
        threshold = threshold_for_precision(labels[val_mask], val_score, config.target_precision)
        rule = f"lowest threshold with precision >= {config.target_precision} on the validation day(s)"
    else:
        threshold = threshold_for_budget(day[val_mask], val_score, config.daily_alert_budget)
        rule = f"at most {config.daily_alert_budget:g} alerts a day on the validation day(s)"

    def block(mask: np.ndarray, score: np.ndarray) -> dict:
        result = evaluate_scores(table, mask, score, k=config.k, time_column=config.time_column,
                                 customer_column=config.customer_column, label_column=config.label)
        at = classification_at(labels[mask], score, threshold)
        result.update({"precision_at_threshold": at["precision"], "recall_at_threshold": at["recall"],
                       "alerts_per_day": at["alerts"] / max(1, result["days"])})
        return result

    metrics = {
        "model": config.model,
        # The columns the split and the metrics used; export copies them into the bundle, so
        # `fraudscore evaluate` reads a table with renamed columns the same way.
        "split": split.describe() | {"validation_days": config.val_days, "columns": {
            "time": config.time_column, "customer": config.customer_column, "label": config.label}},
        "test": block(test_mask, test_score),
        # The model's own score scale, for the score-shift alert (docs/operations.md).
        "validation": block(val_mask, val_score) | {"score_reference": score_reference(val_score)},
        "threshold": {"value": threshold, "rule": rule},
        "members": [{k: v for k, v in info.items() if k != "history"} for info in member_info],
    }

    with new_directory(out) as tmp:
        model.save(tmp / "model.keras")
        params = {k: (str(v) if isinstance(v, (Path, dt.date)) else v) for k, v in dataclasses.asdict(config).items()}
        params["features"] = features
        # Raw-mode serving computes these features online; recorded only when every input is one of them.
        params["feature_spec"] = spec.to_dict() if set(features) <= set(spec.names) else {}
        params["libraries"] = _library_versions()
        # A user and password in a URI (--mlflow-uri https://user:secret@host) stay out of the run.
        params["command"] = re.sub(r"(?<=://)[^/@\s]+@", "", " ".join(sys.argv))
        (tmp / "params.json").write_text(json.dumps(params, indent=2) + "\n")
        fp = fingerprint(matrix[train_mask], labels[train_mask], features, config.data)
        (tmp / "fingerprint.json").write_text(json.dumps(fp, indent=2) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "history.json").write_text(json.dumps([i["history"] for i in member_info], indent=2) + "\n")
        # Held-out rows for export's parity check: test rows, highest scores first so the
        # rows that matter most for alerts are always among them.
        test_rows = matrix[test_mask]
        pick = np.argsort(-test_score, kind="stable")[:HOLDOUT_ROWS]
        np.save(tmp / "holdout.npy", test_rows[np.sort(pick)])
        _plot_pr_curve(tmp / "pr_curve.png", labels[test_mask], test_score, threshold, metrics["test"], config.model)
    return RunResult(out, metrics, time.perf_counter() - started)


def _plot_pr_curve(path: Path, y: np.ndarray, score: np.ndarray, threshold: float, test: dict, kind: str) -> None:
    at = classification_at(y, score, threshold)
    plot_pr_curves(path, y, {"": score}, f"{kind}: test AP {test['ap']:.3f}, AUC {test['auc']:.3f}, "
                   f"CP@100 {test['cp_at_100']:.3f}", point=(at["recall"], at["precision"], f"threshold {threshold:.4g}"))


def plot_pr_curves(path: Path, y: np.ndarray, curves: dict[str, np.ndarray], title: str,
                   point: tuple[float, float, str] | None = None) -> None:
    """Precision against recall of each score array in `curves` (by legend label; "" for none)
    on labels `y`, with the random classifier's line and an optional marked (recall, precision,
    label) point; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.8), dpi=100)
    for label, score in curves.items():
        precision, recall, _ = precision_recall_curve(y, score)
        ax.step(np.concatenate([[0], recall]), np.concatenate([[precision[0] if len(precision) else 1], precision]),
                where="pre", label=label or None)
    if point is not None:
        ax.scatter([point[0]], [point[1]], color="red", zorder=3, label=point[2])
    ax.axhline(y.mean() if len(y) else 0, color="grey", linestyle=":", label=f"random (positive rate {y.mean():.4f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
