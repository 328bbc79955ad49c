"""Customer windows over one Kafka input partition: counts and mean amounts over 1, 7 and
30 days, the current transaction included, same-second ties broken by transaction id
(docs/data.md). Built on the sorted-run store (`store.py`)."""

from __future__ import annotations

import numpy as np

from fraudscore.features.spec import BASELINE_SPEC, SECONDS_PER_DAY, FeatureSpec, customer_count_name, customer_mean_name
from fraudscore.features.store import FOLD_MIN_ROWS, _columns, _Store, _unsorted
from fraudscore.features.windows import mean_amounts


class CustomerState(_Store):
    """The customer windows over one Kafka input partition's transactions.

    Example:
        >>> state = CustomerState()
        >>> f = state.features(ids=[1, 2], seconds=[100, 100], customers=[7, 7], amounts=[10.0, 20.0])
        >>> f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist(), f["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"].tolist()
        ([1, 2], [10.0, 15.0])
        >>> state.add(ids=[2, 3], seconds=[100, 200], customers=[7, 7], amounts=[20.0, 5.0]).tolist()
        [False, True]

    `add` stores rows without computing features (restoring state by replaying a
    partition); `features` stores a batch's new rows, then answers for every row. A
    transaction is identified by (customer, time, id): a redelivered row is not stored
    twice and gets the features it got the first time, unless an earlier transaction
    arrived in between. Amounts must be finite. Folding and eviction happen at the
    start of `add`/`features` when the recent run is full; `evict()` forces them.
    """

    def __init__(self, spec: FeatureSpec = BASELINE_SPEC, *, allowed_lateness_s: int = SECONDS_PER_DAY, fold_min_rows: int = FOLD_MIN_ROWS):
        super().__init__(spec, spec.customer_reach_s, allowed_lateness_s, fold_min_rows, np.float64)

    def add(self, ids: np.ndarray, seconds: np.ndarray, customers: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """Store the transactions not stored yet; returns which rows were new."""
        ids, seconds, customers, amounts = _columns(amounts, ids=ids, seconds=seconds, customers=customers)
        if not len(ids):
            return np.zeros(0, bool)
        return self._insert(ids, seconds, customers, amounts).new

    def features(self, ids: np.ndarray, seconds: np.ndarray, customers: np.ndarray, amounts: np.ndarray) -> dict[str, np.ndarray]:
        """Store the batch's new transactions, then the customer window features of every row.

        Counts are int64 and means float64, keyed by the spec's feature names.
        """
        ids, seconds, customers, amounts = _columns(amounts, ids=ids, seconds=seconds, customers=customers)
        n = len(ids)
        if not n:
            return {name: np.zeros(0, np.int64 if "NB_TX" in name else np.float64) for name in self.spec.names if name.startswith("CUSTOMER")}
        batch = self._insert(ids, seconds, customers, amounts)
        runs = [(run, rank) for run, rank in ((self._main, batch.rank_main), (self._recent, batch.rank_recent)) if len(run)]
        exact = all(run.amount_sums()[1] == 100.0 for run, _ in runs)
        whole: dict[int, np.ndarray] = {}  # per run: where each query's customer starts in it
        out = {}
        for w in self.spec.customer_windows_days:
            width = w * SECONDS_PER_DAY
            starts = batch.keys - width
            count = np.zeros(n, np.int64)
            total = np.zeros(n, np.int64 if exact else np.float64)
            for j, (run, rank) in enumerate(runs):
                # Two cheap cases spare a search: the run ends before every window starts
                # (the main run for short windows), or every window starts before the run
                # does (the recent run for long windows): the same answer for all such w.
                if run.newest <= batch.oldest - width:
                    first = rank
                elif batch.newest - width < run.oldest:
                    if j not in whole:
                        whole[j] = np.searchsorted(run.keys, starts, side="right")
                    first = whole[j]
                else:
                    first = np.searchsorted(run.keys, starts, side="right")
                sums, scale = run.amount_sums()
                count += rank - first
                total += sums[rank] - sums[first] if exact else (sums[rank] - sums[first]) / scale
            out[customer_count_name(w)] = _unsorted(batch.perm, count)
            out[customer_mean_name(w)] = _unsorted(batch.perm, mean_amounts(total, 100.0 if exact else 1.0, count))
        return out
