"""Window arithmetic shared by the offline (`baseline`) and online (`online`) engines.

Both engines keep rows sorted by a composite int64 key that is increasing in
(entity, time): a window (t - w, t] of one entity is then the key range
(key - w, key], found with `searchsorted`, and its count and sum are differences of
positions and of prefix sums. Sharing the prefix sums (`cent_sums`) and the final
divisions (`mean_amounts`, `fraud_shares`) here is what makes the two engines agree to
the last bit whenever amounts are whole cents.
"""

from __future__ import annotations

import numpy as np

from fraudscore.features.spec import SECONDS_PER_DAY, FeatureSpec


def calendar_features(seconds: np.ndarray, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """TX_DURING_WEEKEND and TX_DURING_NIGHT (int64 0/1) of event times in seconds since the epoch, UTC."""
    seconds = np.asarray(seconds, dtype=np.int64)
    day = seconds // SECONDS_PER_DAY
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return {
        "TX_DURING_WEEKEND": (weekday >= 5).astype(np.int64),
        "TX_DURING_NIGHT": ((seconds % SECONDS_PER_DAY) // 3600 <= spec.night_last_hour).astype(np.int64),
    }


def cent_sums(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Prefix sums (length n + 1) and their scale: int64 cents, exact, when every value
    is a whole number of cents (card amounts are), float64 otherwise.

    Exact sums make a window's mean independent of where the prefix starts, so the
    online engine (prefix over its retained rows) and the offline one (prefix over the
    whole table) give the same float.
    """
    scaled = values * 100
    cents = np.rint(scaled)
    # Whole cents up to the rounding of `values * 100` itself (relative 1e-12), so that a
    # sub-cent amount (1e-8) is never rounded away on one side and kept on the other.
    whole = np.abs(cents - scaled) <= 1e-12 * np.maximum(1.0, np.abs(scaled))
    if len(values) and np.all(whole) and np.abs(cents).sum() < 2**62:
        return np.concatenate([[0], np.cumsum(cents.astype(np.int64))]), 100.0
    return np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)]), 1.0


def mean_amounts(sums: np.ndarray, scale: float, count: np.ndarray) -> np.ndarray:
    """Mean amount of a window from its (scaled) sum and its count (>= 1)."""
    return (sums / scale / count).astype(np.float64)


def fraud_shares(frauds: np.ndarray, count: np.ndarray) -> np.ndarray:
    """frauds / count, 0 where the window is empty."""
    return np.divide(frauds, count, out=np.zeros(len(count)), where=count > 0)
