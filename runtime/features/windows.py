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

from fraudscore.features.spec import (SECONDS_PER_DAY, FeatureSpec, customer_amount_ratio_name, customer_count_name,
                                      customer_mean_name, terminal_count_name, terminal_fraud_count_name, terminal_risk_name)


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


def amount_log_ratios(amount: np.ndarray, count: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """log(1 + amount) - log(1 + m), m the mean amount of the window's rows other than the current
    one: (count * mean - amount) / (count - 1); 0 where the current row is the window's only one.

    Both engines call this with the same count and mean (equal to the last bit), so they agree.

    >>> amount_log_ratios(np.array([50.0, 9.0]), np.array([2, 1]), np.array([30.0, 9.0])).round(4).tolist()
    [1.5339, 0.0]
    """
    amount = np.asarray(amount, dtype=np.float64)
    count = np.asarray(count)
    earlier = np.divide(count * np.asarray(mean, dtype=np.float64) - amount, count - 1,
                        out=np.zeros(len(amount)), where=count > 1)
    # Rounding can leave a sum of zeros at -1e-13; an amount is never negative.
    ratio = np.log1p(amount) - np.log1p(np.maximum(earlier, 0.0))
    return np.where(count > 1, ratio, 0.0)


def fraud_counts(risk: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The confirmed frauds of a terminal window, from its risk (frauds / count) and count: exact,
    since (f / c) * c rounds to within one unit in the last place of f, far below 0.5.

    >>> fraud_counts(np.array([1 / 3, 0.0, 0.1]), np.array([3, 0, 10])).tolist()
    [1, 0, 1]
    """
    return np.rint(np.asarray(risk, dtype=np.float64) * np.asarray(count)).astype(np.int64)


def derived_features(columns: dict[str, np.ndarray], spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Version 2's features, from the window columns both engines compute first (`columns`, keyed by
    feature name): the customer amount ratios and the terminal fraud counts that `spec` lists.
    One function for both engines, so that equal windows give equal derived features, bit for bit."""
    out = {}
    for w in spec.amount_ratio_windows_days:
        out[customer_amount_ratio_name(w)] = amount_log_ratios(columns["TX_AMOUNT"], columns[customer_count_name(w)],
                                                               columns[customer_mean_name(w)])
    for w in spec.fraud_count_windows_days:
        out[terminal_fraud_count_name(w)] = fraud_counts(columns[terminal_risk_name(w)], columns[terminal_count_name(w)])
    return out


def fraud_shares(frauds: np.ndarray, count: np.ndarray) -> np.ndarray:
    """frauds / count, 0 where the window is empty."""
    return np.divide(frauds, count, out=np.zeros(len(count)), where=count > 0)
