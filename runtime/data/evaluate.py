"""The `evaluate` job: score a feature table through exported bundles, report the protocol's metrics.

Scoring goes through the runtime's own path (bundle verification, feature matrix, one
ONNX Runtime call), the artefact that ships, not the Keras model.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from fraudscore.serving.bundle import load_bundle
from fraudscore.errors import InputError
from fraudscore.data.evaluation import Split, evaluate_scores, split_masks
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


def evaluate_bundles(
    bundles: list[Path],
    data: Path,
    start: dt.date,
    *,
    train_days: int = 7,
    delay_days: int = 7,
    test_days: int = 7,
    k: int = 100,
    device: str = "cpu",
    time_column: str | None = None,
    customer_column: str | None = None,
    label_column: str | None = None,
) -> dict:
    """Metrics of each bundle on the test days of one split of `data`; the first bundle's at top level.

    Each bundle is evaluated with its own recorded time/customer/label columns (`bundle_columns`)
    unless the `*_column` arguments name them."""
    loaded = [load_bundle(b) for b in bundles]
    table = read_table(data)
    split = Split(start, train_days, delay_days, test_days)
    overrides = {"time": time_column, "customer": customer_column, "label": label_column}
    results = []
    for bundle in loaded:
        columns = bundle_columns(bundle.manifest, overrides)
        named = {"time_column": columns["time"], "customer_column": columns["customer"], "label_column": columns["label"]}
        try:
            _, test = split_masks(table, split, **named)
        except InputError as exc:
            raise InputError(f"{data}: {exc} (bundle {bundle.path} uses time {columns['time']}, customer "
                             f"{columns['customer']}, label {columns['label']}; name others with --time-column, "
                             "--customer-column, --label)") from None
        if not test.any():
            raise InputError(f"{data}: no rows in the test window {split.describe()['test']}; check --start and the data's dates")
        matrix = feature_matrix(table, bundle.features, str(data))[test]
        scores = Scorer(bundle, device=device).score(matrix)
        metrics = evaluate_scores(table, test, scores, k=k, **named)
        alerts = scores >= bundle.manifest.threshold
        metrics.update(
            {
                "bundle": str(bundle.path),
                "model_kind": bundle.manifest.model_kind,
                "model_version": bundle.manifest.model_version,
                "threshold": bundle.manifest.threshold,
                "columns": columns,
                "alerts_per_day": float(alerts.sum() / max(1, metrics["days"])),
                "precision_at_threshold": float(table[columns["label"]][test][alerts].mean()) if alerts.any() else float("nan"),
            }
        )
        results.append(metrics)
    return results[0] | {"split": split.describe(), "data": str(data), "bundles": results}


def format_table(report: dict, k: int = 100) -> str:
    """Bundles side by side: one column each."""
    rows = [
        ("model", "model_kind", "{}"),
        ("version", "model_version", "{}"),
        ("AUC", "auc", "{:.4f}"),
        ("AP", "ap", "{:.4f}"),
        (f"CP@{k}", f"cp_at_{k}", "{:.4f}"),
        ("threshold", "threshold", "{:.4g}"),
        ("alerts/day", "alerts_per_day", "{:.1f}"),
        ("precision@thr", "precision_at_threshold", "{:.3f}"),
        ("transactions", "transactions", "{:,}"),
        ("frauds", "frauds", "{:,}"),
    ]
    cells = [[label] + [fmt.format(b[key]) if not (isinstance(b[key], float) and np.isnan(b[key])) else "n/a" for b in report["bundles"]] for label, key, fmt in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = [f"test {report['split']['test']} (train {report['split']['train']}, delay {report['split']['delay_days']} days)"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join(lines)
