"""Feature drift: the population stability index (PSI) of live values against the
training shares recorded in the bundle's fingerprint (`fraudscore.data.fingerprint`)."""

from __future__ import annotations

import numpy as np


def psi(expected_shares: np.ndarray, values: np.ndarray, bin_edges: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index of `values` against the training shares of the same bins."""
    expected = np.maximum(np.asarray(expected_shares, dtype=np.float64), floor)
    counts = np.bincount(np.searchsorted(np.asarray(bin_edges), values, side="right"), minlength=len(expected))
    actual = np.maximum(counts / max(1, len(values)), floor)
    return float(np.sum((actual - expected) * np.log(actual / expected)))
