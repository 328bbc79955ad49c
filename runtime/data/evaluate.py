"""The `evaluate` job: score a feature table through exported bundles, report the protocol's metrics.

Scoring goes through the runtime's own path (bundle verification, feature matrix, one
ONNX Runtime call), the artefact that ships, not the Keras model.

Honest by default: the split is the one `train` recorded in the bundle unless --start names
another, and a test window that overlaps a bundle's training window is refused (its scores
there are on rows the model learned from). Next to the protocol's figures (known compromised
cards removed) come the production-like ones: every transaction of the test days, alerts a
day at the bundle's threshold, which is what a sidecar raises on those days.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from fraudscore.serving.bundle import load_bundle
from fraudscore.errors import InputError, UsageError
from fraudscore.data.evaluation import (Split, average_precision, classification_at, day_index, evaluate_scores, roc_auc,
                                        split_masks, window_mask)
from fraudscore.serving.scorer import Scorer
from fraudscore.data.matrix import feature_matrix
from fraudscore.data.table import read_table

# What a bundle trained before the columns were recorded used (`fraudscore train`'s defaults).
DEFAULT_COLUMNS = {"time": "TX_DATETIME", "customer": "CUSTOMER_ID", "label": "TX_FRAUD"}


def bundle_columns(manifest, overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    """The time, customer and label columns to evaluate a bundle with: the flags given, else what
    training recorded in the manifest (`metrics.split.columns`), else train's defaults."""
    recorded = (manifest.metrics.get("split") or {}).get("columns") or {}
    given = {k: v for k, v in (overrides or {}).items() if v}
    return DEFAULT_COLUMNS | {k: str(v) for k, v in recorded.items() if k in DEFAULT_COLUMNS} | given


def _day_range(text: str) -> tuple[dt.date, dt.date]:
    first, _, last = text.partition("..")
    return dt.date.fromisoformat(first), dt.date.fromisoformat(last)


def recorded_split(manifest) -> Split | None:
    """The split `train` recorded (metrics.split: train and test day ranges), or None for a bundle
    exported before it was recorded, from a run without one, or with ranges that do not read."""
    split = manifest.metrics.get("split") or {}
    try:
        train_first, train_last = _day_range(split["train"])
        test_first, test_last = _day_range(split["test"])
        return Split(train_first, (train_last - train_first).days + 1, (test_first - train_last).days - 1,
                     (test_last - test_first).days + 1)
    except (KeyError, TypeError, ValueError, AttributeError, InputError):
        return None


SOURCES = {"recorded": "the split recorded in the bundle", "recorded+flags": "the recorded split, days from the flags",
           "start": "--start"}


def choose_split(bundles, start: dt.date | None, train_days: int | None = None, delay_days: int | None = None,
                 test_days: int | None = None) -> tuple[Split, str, list[str]]:
    """The split to evaluate on, where it came from (a key of SOURCES) and notes for stderr.

    Without `start`, the first bundle's recorded split (the days flags given still apply);
    with it, the recorded lengths of training, delay and test (the protocol's 7/7/7 for a
    bundle with none) unless flags name them. Refused (UsageError, with a --start that every
    bundle accepts) when the test window overlaps the training window any bundle recorded;
    a bundle that recorded none cannot be checked, and a note says so."""
    first = bundles[0]
    recorded = recorded_split(first.manifest)
    base = recorded or Split(dt.date(1970, 1, 1))
    days_given = (train_days, delay_days, test_days) != (None, None, None)
    if start is None:
        if recorded is None:
            raise UsageError(f"{first.path}: the bundle records no training split (exported by an older fraudscore); "
                             "pass --start, the first training day of the split to evaluate")
        start, source = recorded.start, "recorded+flags" if days_given else "recorded"
    else:
        source = "start"
    split = Split(start, base.train_days if train_days is None else train_days,
                  base.delay_days if delay_days is None else delay_days,
                  base.test_days if test_days is None else test_days)
    test_first = split.test_start
    test_last = test_first + dt.timedelta(days=split.test_days - 1)
    trained = {bundle.path: recorded_split(bundle.manifest) for bundle in bundles}
    notes = [f"note: {path} records no training window, so this test window is not checked against it"
             for path, window in trained.items() if window is None]
    windows = {path: (w.start, w.start + dt.timedelta(days=w.train_days - 1)) for path, w in trained.items() if w}
    overlapping = [(path, a, b) for path, (a, b) in windows.items() if test_first <= b and test_last >= a]
    if overlapping:
        path, a, b = overlapping[0]
        latest = max(b for _, b in windows.values())
        honest = latest + dt.timedelta(days=1 - split.train_days)
        how = ("drop --start to test on the split recorded in the first bundle, or pass" if source == "start"
               else "pass")
        raise UsageError(
            f"the test window {test_first}..{test_last} ({SOURCES[source]}) overlaps {path}'s training window "
            f"{a}..{b}: its scores there are on rows the model learned from, and its figures would flatter it. To "
            f"test after every bundle's training, {how} --start {honest} (with --train-days {split.train_days} and "
            f"--delay-days {split.delay_days} the test window then begins "
            f"{latest + dt.timedelta(days=1 + split.delay_days)}, after training and the label delay)")
    return split, source, notes


def production_like(table, rows: np.ndarray, scores: np.ndarray, threshold: float, *, time_column: str,
                    label_column: str) -> dict:
    """Every transaction of the test days (no card removed): what a sidecar scores on them, and
    the alerts it raises at the bundle's threshold."""
    y = table[label_column][rows]
    days = max(1, len(np.unique(day_index(table[time_column][rows]))))
    at = classification_at(y, scores, threshold)
    return {"transactions": int(rows.sum()), "frauds": int((y == 1).sum()), "days": days,
            "alerts": at["alerts"], "alerts_per_day": at["alerts"] / days,
            "precision_at_threshold": at["precision"], "recall_at_threshold": at["recall"],
            "auc": roc_auc(y, scores), "ap": average_precision(y, scores)}


def evaluate_bundles(
    bundles: list[Path],
    data: Path,
    start: dt.date | None = None,
    *,
    train_days: int | None = None,
    delay_days: int | None = None,
    test_days: int | None = None,
    k: int = 100,
    device: str = "cpu",
    time_column: str | None = None,
    customer_column: str | None = None,
    label_column: str | None = None,
) -> dict:
    """Metrics of each bundle on the test days of one split of `data`; the first bundle's at top level.

    The split is `choose_split`'s (the recorded one unless `start` is given; never one that tests
    inside a training window). Each bundle is evaluated with its own recorded time/customer/label
    columns (`bundle_columns`) unless the `*_column` arguments name them. Besides the protocol's
    figures, "all_cards" holds the production-like ones (`production_like`)."""
    loaded = [load_bundle(b) for b in bundles]
    split, source, notes = choose_split(loaded, start, train_days, delay_days, test_days)
    table = read_table(data)
    overrides = {"time": time_column, "customer": customer_column, "label": label_column}
    results = [_evaluate_bundle(bundle, table, data, split, source, bundle_columns(bundle.manifest, overrides), k, device)
               for bundle in loaded]
    return results[0] | {"split": split.describe() | {"source": source}, "data": str(data), "bundles": results,
                         "notes": notes}


def _evaluate_bundle(bundle, table, data: Path, split, source: str, columns: dict[str, str], k: int, device: str) -> dict:
    """One bundle's metrics on the split's test days (`columns`: its time, customer and label columns)."""
    named = {"time_column": columns["time"], "customer_column": columns["customer"], "label_column": columns["label"]}
    try:
        _, test = split_masks(table, split, **named)
    except InputError as exc:
        raise InputError(f"{data}: {exc} (bundle {bundle.path} uses time {columns['time']}, customer "
                         f"{columns['customer']}, label {columns['label']}; name others with --time-column, "
                         "--customer-column, --label)") from None
    if not test.any():
        fix = "check --start and the data's dates" if source == "start" else (
            "pass --start (and --test-days) to test on days the data covers")
        raise InputError(f"{data}: no rows in the test window {split.describe()['test']} ({SOURCES[source]}); {fix}")
    every = window_mask(table, split, time_column=columns["time"])
    every_scores = Scorer(bundle, device=device).score(feature_matrix(table, bundle.features, str(data))[every])
    scores = every_scores[test[every]]
    metrics = evaluate_scores(table, test, scores, k=k, **named)
    alerts = scores >= bundle.manifest.threshold
    metrics.update(
        {
            "bundle": str(bundle.path),
            "model_kind": bundle.manifest.model_kind,
            "model_version": bundle.manifest.model_version,
            "threshold": bundle.manifest.threshold,
            "columns": columns,
            "trained": window.describe()["train"] if (window := recorded_split(bundle.manifest)) else None,
            "tracking": bundle.manifest.tracking,
            "alerts_per_day": float(alerts.sum() / max(1, metrics["days"])),
            "precision_at_threshold": float(table[columns["label"]][test][alerts].mean()) if alerts.any() else float("nan"),
            "all_cards": production_like(table, every, every_scores, bundle.manifest.threshold,
                                         time_column=columns["time"], label_column=columns["label"]),
        }
    )
    return metrics


def format_table(report: dict, k: int = 100) -> str:
    """Bundles side by side: one column each; the protocol's figures, then the production-like ones."""
    protocol, every = None, "all_cards"  # where each row's value lives: the bundle's report or its all_cards
    rows = [
        ("model", protocol, "model_kind", "{}"),
        ("version", protocol, "model_version", "{}"),
        ("threshold", protocol, "threshold", "{:.4g}"),
        ("protocol (known compromised cards removed):", None, None, ""),
        ("  AUC", protocol, "auc", "{:.4f}"),
        ("  AP", protocol, "ap", "{:.4f}"),
        (f"  CP@{k}", protocol, f"cp_at_{k}", "{:.4f}"),
        ("  alerts/day", protocol, "alerts_per_day", "{:.1f}"),
        ("  precision@thr", protocol, "precision_at_threshold", "{:.3f}"),
        ("  transactions", protocol, "transactions", "{:,}"),
        ("  frauds", protocol, "frauds", "{:,}"),
        ("production-like (every card, as a sidecar):", None, None, ""),
        ("  alerts/day", every, "alerts_per_day", "{:.1f}"),
        ("  precision@thr", every, "precision_at_threshold", "{:.3f}"),
        ("  recall@thr", every, "recall_at_threshold", "{:.3f}"),
        ("  AUC", every, "auc", "{:.4f}"),
        ("  AP", every, "ap", "{:.4f}"),
        ("  transactions", every, "transactions", "{:,}"),
        ("  frauds", every, "frauds", "{:,}"),
    ]

    def cell(value, fmt: str) -> str:
        return "n/a" if isinstance(value, float) and np.isnan(value) else fmt.format(value)

    cells = [(label, key and [cell((b[block] if block else b)[key], fmt) for b in report["bundles"]])
             for label, block, key, fmt in rows]
    filled = [(label, values) for label, values in cells if values]
    widths = [max(len(label) for label, _ in filled)] + [max(len(v[i]) for _, v in filled) for i in range(len(report["bundles"]))]
    split = report["split"]
    lines = [f"test {split['test']} (train {split['train']}, delay {split['delay_days']} days; "
             f"{SOURCES.get(split.get('source'), '--start')})"]
    lines += [label if not values else "  ".join([label.ljust(widths[0])] + [v.rjust(w) for v, w in zip(values, widths[1:])])
              for label, values in cells]
    return "\n".join(lines)
