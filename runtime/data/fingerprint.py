"""Data fingerprints: what a model was trained on, for provenance and drift baselines.

A fingerprint holds the sha256 of the input file, the row count, the positive rate and,
per feature, decile edges and the share of training rows in each decile bin. The
runtime counts live traffic into those bins and Prometheus compares the window's shares
with the training shares (population stability index, PSI; `fraudscore.serving.drift`).

A score reference (`score_reference`) is the model's own scale: mean and quantiles of its
scores on the validation day(s), which the score-shift alert compares live scores with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

QUANTILES = tuple(i / 10 for i in range(11))
SCORE_QUANTILES = (0.5, 0.9, 0.99)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def feature_profile(values: np.ndarray) -> dict:
    """Decile edges of one feature and the share of rows falling in each bin between them."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.quantile(values, QUANTILES) if len(values) else np.zeros(len(QUANTILES))
    inner = np.unique(edges[1:-1])
    counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(inner) + 1)
    return {
        "quantiles": {f"{q:.1f}": float(e) for q, e in zip(QUANTILES, edges)},
        "bin_edges": inner.tolist(),
        "bin_shares": (counts / max(1, len(values))).tolist(),
        "mean": float(values.mean()) if len(values) else 0.0,
        "std": float(values.std()) if len(values) else 0.0,
    }


def fingerprint(matrix: np.ndarray, labels: np.ndarray, features: list[str], source: str | Path | None) -> dict:
    """Fingerprint of a training matrix (rows x features) and its labels."""
    out = {
        "rows": int(len(matrix)),
        "positive_rate": float(np.mean(labels == 1)) if len(labels) else 0.0,
        "features": {name: feature_profile(matrix[:, i]) for i, name in enumerate(features)},
    }
    if source is not None:
        out["source"] = str(source)
        out["sha256"] = file_sha256(source)
    return out


def score_reference(scores: np.ndarray) -> dict:
    """A model's score scale: the mean and the p50/p90/p99 of its scores on held-out rows, and their count.

    An MLP's mean score is ~0.01, an autoencoder's reconstruction error is in its own units:
    a score-shift bound is only meaningful relative to this."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        return {}
    return {
        "rows": int(len(scores)),
        "mean": float(scores.mean()),
        "quantiles": {f"{q:g}": float(v) for q, v in zip(SCORE_QUANTILES, np.quantile(scores, SCORE_QUANTILES))},
    }
