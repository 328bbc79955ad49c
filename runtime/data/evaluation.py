"""The evaluation protocol of the handbook (chapters 3.5, 5, 7) and its metrics.

Split: train on `train_days` days from `start`, skip `delay_days` (labels arrive late),
test on the next `test_days` days. On each test day, drop the cards (customers) already
known to be compromised: those with a fraud in the training window, and those with a
fraud on any day from the training window's end up to `delay_days` + 1 days before
that test day (the handbook's rule: frauds become known after the delay).

Metrics, all on numpy arrays and shared by `train` and `evaluate`:
- ROC AUC (ties get average ranks);
- average precision (AP), the step-wise area under the precision-recall curve, as
  scikit-learn defines it (tied scores form one threshold);
- card precision@k: per test day, each card's score is its highest transaction score
  that day and it is compromised if any of its transactions that day is fraud; take the
  k cards with the highest scores, leaving out cards already detected (a true positive in
  an earlier day's top k); the share that are compromised, divided by k even on a day
  with fewer than k cards; then the mean over the test days. Tied card scores are
  broken by card id, ascending, so the figure is deterministic.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from fraudscore.errors import InputError
from fraudscore.data.table import Table

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Split:
    """Day ranges of one train / delay / test split (dates inclusive of `start`)."""

    start: dt.date
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    def __post_init__(self) -> None:
        if self.train_days < 1 or self.test_days < 1 or self.delay_days < 0:
            raise InputError(
                f"train and test need at least one day and the delay cannot be negative "
                f"(got {self.train_days}/{self.delay_days}/{self.test_days})"
            )

    @property
    def test_start(self) -> dt.date:
        return self.start + dt.timedelta(days=self.train_days + self.delay_days)

    def describe(self) -> dict[str, str]:
        last = lambda first, n: (first + dt.timedelta(days=n - 1)).isoformat()  # noqa: E731
        return {
            "train": f"{self.start.isoformat()}..{last(self.start, self.train_days)}",
            "test": f"{self.test_start.isoformat()}..{last(self.test_start, self.test_days)}",
            "delay_days": str(self.delay_days),
        }


def day_index(times: np.ndarray) -> np.ndarray:
    """Whole days since 1970-01-01 for datetime64 values."""
    return times.astype("datetime64[D]").astype(np.int64)


def window_mask(table: Table, split: Split, *, time_column: str = "TX_DATETIME") -> np.ndarray:
    """Every row of the split's test days, no card removed (what production scores on those days)."""
    if time_column not in table:
        raise InputError(f"column {time_column} is missing; the protocol needs time, customer and label columns")
    day = day_index(table[time_column])
    first = int(np.datetime64(split.test_start, "D").astype(np.int64))
    return (day >= first) & (day < first + split.test_days)


def split_masks(
    table: Table,
    split: Split,
    *,
    time_column: str = "TX_DATETIME",
    customer_column: str = "CUSTOMER_ID",
    label_column: str = "TX_FRAUD",
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) over the rows of `table`, known compromised cards removed from test."""
    for column in (time_column, customer_column, label_column):
        if column not in table:
            raise InputError(f"column {column} is missing; the protocol needs time, customer and label columns")
    if table[time_column].dtype.kind != "M":
        raise InputError(f"column {time_column} must hold dates, got {table[time_column].dtype}")
    day = day_index(table[time_column])
    first = int(np.datetime64(split.start, "D").astype(np.int64))
    train = (day >= first) & (day < first + split.train_days)
    label = table[label_column]
    customer = table[customer_column]
    known = set(np.unique(customer[train & (label == 1)]).tolist())
    test = np.zeros(len(day), dtype=bool)
    test_first = first + split.train_days + split.delay_days
    for i in range(split.test_days):
        # Frauds on the day before the delay ends become known before test day i.
        newly = day == first + split.train_days + i - 1
        known.update(np.unique(customer[newly & (label == 1)]).tolist())
        today = day == test_first + i
        if known:
            today &= ~np.isin(customer, np.fromiter(known, dtype=customer.dtype, count=len(known)))
        test |= today
    return train, test


# ---------------------------------------------------------------------------- metrics


def _check(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    if y.shape != score.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {score.shape} must be 1-D and aligned")
    if not np.isfinite(score).all():
        raise InputError(f"{int((~np.isfinite(score)).sum())} scores are NaN or infinite")
    return (y == 1).astype(np.int64), score


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, score = _check(y, score)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    # Average ranks (1-based) over runs of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(score)]])
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(score))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def precision_recall_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) at each distinct score, from the highest threshold down."""
    y, score = _check(y, score)
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    last_of_run = np.concatenate([np.flatnonzero(np.diff(s)), [len(s) - 1]]) if len(s) else np.array([], dtype=int)
    tp = np.cumsum(t)[last_of_run]
    predicted = last_of_run + 1
    total = int(y.sum())
    precision = tp / predicted
    recall = tp / total if total else np.zeros(len(tp))
    return precision, recall, s[last_of_run]


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """AP = sum over thresholds of (recall step) x precision; NaN without positives."""
    y_, _ = _check(y, score)
    if y_.sum() == 0:
        return float("nan")
    precision, recall, _ = precision_recall_curve(y, score)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def card_precision_at_k(day: np.ndarray, card: np.ndarray, y: np.ndarray, score: np.ndarray, k: int = 100) -> float:
    """Mean over days of the share of compromised cards among the day's top-k cards (see module doc)."""
    y, score = _check(y, score)
    if k < 1:
        raise ValueError("k must be at least 1")
    detected: np.ndarray = np.array([], dtype=card.dtype)
    per_day = []
    for d in np.unique(day):
        today = (day == d) & ~np.isin(card, detected)
        cards, inverse = np.unique(card[today], return_inverse=True)
        best = np.full(len(cards), -np.inf)
        np.maximum.at(best, inverse, score[today])
        compromised = np.zeros(len(cards), dtype=np.int64)
        np.maximum.at(compromised, inverse, y[today])
        top = np.lexsort((cards, -best))[:k]  # highest score first, ties by card id
        per_day.append(compromised[top].sum() / k)
        detected = np.concatenate([detected, cards[top][compromised[top] == 1]])
    return float(np.mean(per_day)) if per_day else float("nan")


def threshold_for_precision(y: np.ndarray, score: np.ndarray, target: float) -> float:
    """Lowest threshold whose precision reaches `target` (most recall at that precision)."""
    precision, _, thresholds = precision_recall_curve(y, score)
    ok = np.flatnonzero(precision >= target)
    if len(ok) == 0:
        return float(thresholds[0]) if len(thresholds) else 0.5
    return float(thresholds[ok[-1]])


def threshold_for_budget(day: np.ndarray, score: np.ndarray, alerts_per_day: float) -> float:
    """Threshold at which the mean number of alerts a day is at most `alerts_per_day`."""
    n_days = max(1, len(np.unique(day)))
    allowed = int(np.floor(alerts_per_day * n_days))
    ordered = np.sort(np.asarray(score, dtype=np.float64))[::-1]
    if allowed <= 0:
        return float(np.nextafter(ordered[0], np.inf)) if len(ordered) else 1.0
    if allowed >= len(ordered):
        return float(ordered[-1]) if len(ordered) else 0.0
    # Alert when score >= threshold: pick the allowed-th score, raised above ties with the next.
    threshold = ordered[allowed - 1]
    if ordered[allowed] == threshold:
        threshold = np.nextafter(threshold, np.inf)
    return float(threshold)


def classification_at(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and alert count when alerting at score >= threshold."""
    y, score = _check(y, score)
    alert = score >= threshold
    tp = int((alert & (y == 1)).sum())
    return {
        "threshold": float(threshold),
        "alerts": int(alert.sum()),
        "precision": tp / int(alert.sum()) if alert.any() else float("nan"),
        "recall": tp / int(y.sum()) if y.any() else float("nan"),
    }


def evaluate_scores(
    table: Table,
    mask: np.ndarray,
    score: np.ndarray,
    *,
    k: int = 100,
    time_column: str = "TX_DATETIME",
    customer_column: str = "CUSTOMER_ID",
    label_column: str = "TX_FRAUD",
) -> dict[str, float]:
    """AUC, AP, CP@k (and CP@100) of `score`, aligned with the rows selected by `mask`."""
    y = table[label_column][mask]
    day = day_index(table[time_column][mask])
    cards = table[customer_column][mask]
    result = {
        "auc": roc_auc(y, score),
        "ap": average_precision(y, score),
        f"cp_at_{k}": card_precision_at_k(day, cards, y, score, k),
        "transactions": int(mask.sum()),
        "frauds": int((y == 1).sum()),
        "days": int(len(np.unique(day))),
    }
    if k != 100:  # the headline figure of the handbook, always reported
        result["cp_at_100"] = card_precision_at_k(day, cards, y, score, 100)
    return result
