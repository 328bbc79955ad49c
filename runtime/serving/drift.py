"""Feature drift: live feature values counted in the bins of the training fingerprint.

The bundle's fingerprint (`fraudscore.data.fingerprint`) holds, per feature, the decile
edges of the training window and the share of training rows in each bin between them.
The sidecar counts every scored row into those bins (`fraudscore_feature_bin_total`) and
exports the training shares (`fraudscore_feature_training_share`); Prometheus computes the
population stability index (PSI) over a time window from the two
(deploy/prometheus/rules.yml). A window, not a batch: a batch's rows come from one moment,
so their PSI measures the moment (night, weekday) and the batch size, not drift.

Calendar features are left out: a window of an hour (or a day) is all night or all day,
all weekend or none, while the training shares average over whole weeks, so their PSI is
large with no drift at all. Their distribution is fixed by the clock, not by the payers.

    baselines = drift_baselines(manifest.features, manifest.fingerprint)
    counts = bin_counts(matrix[:, baselines[0].column], baselines[0].edges)
    psi(baselines[0].shares, counts)  # the PSI the recording rules compute, for one window's counts
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Their share in any window of less than a week depends on when the window is, not on drift.
CALENDAR_FEATURES = frozenset({"TX_DURING_WEEKEND", "TX_DURING_NIGHT"})
# Shares are clamped to this before the logarithm: an empty bin would make PSI infinite.
# The recording rules use the same floor.
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class DriftBaseline:
    """One feature's training bins: `shares[i]` of training rows fell in bin i, where bin 0 is
    `value < edges[0]`, bin i is `edges[i-1] <= value < edges[i]` and the last bin `value >= edges[-1]`."""

    column: int  # the feature's column in the model's input matrix
    feature: str
    edges: np.ndarray  # float64, increasing
    shares: np.ndarray  # float64, len(edges) + 1, sums to 1


def drift_baselines(features: Sequence[str], fingerprint: Mapping[str, Any]) -> list[DriftBaseline]:
    """The drift baselines of a bundle: every input feature with a profile in its fingerprint,
    except the calendar features. A bundle without a fingerprint has none (no drift series)."""
    profiles = fingerprint.get("features", {}) if isinstance(fingerprint, Mapping) else {}
    out = []
    for column, name in enumerate(features):
        profile = profiles.get(name)
        if name in CALENDAR_FEATURES or not profile:
            continue
        edges = np.asarray(profile["bin_edges"], dtype=np.float64)
        shares = np.asarray(profile["bin_shares"], dtype=np.float64)
        if len(shares) != len(edges) + 1:  # not a fingerprint this runtime understands: no baseline
            continue
        out.append(DriftBaseline(column, name, edges, shares))
    return out


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many `values` fall in each bin between `edges` (len(edges) + 1 counts, int64)."""
    index = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(index, minlength=len(edges) + 1).astype(np.int64)


def psi(expected_shares: np.ndarray, counts: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of live bin `counts` against the training shares of the same bins:
    sum((live - train) * ln(live / train)) with both shares clamped to `floor`."""
    counts = np.asarray(counts, dtype=np.float64)
    expected = np.maximum(np.asarray(expected_shares, dtype=np.float64), floor)
    actual = np.maximum(counts / max(1.0, counts.sum()), floor)
    return float(np.sum((actual - expected) * np.log(actual / expected)))
