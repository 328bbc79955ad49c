"""Online baseline features: the columns of `baseline_features`, computed batch by batch.

The sidecar sees raw transactions in Kafka batches, not a table. This engine keeps
just enough of the past to give every transaction the features the offline transform
(`baseline.baseline_features`) would give it over the transactions seen so far:
counts exactly, means and risks to the last bit when amounts are whole cents (within
1e-9 relative otherwise). It is pure: no Kafka, no I/O, no clocks.

Definitions (docs/data.md, handbook chapter 3.4); time is event time, integer seconds
since the epoch, UTC:
- customer windows: the customer's own transactions with time in (t - w, t], the
  current one included; of those at the same second as t, only ids <= the current id
  count (tie rule "same_second_by_transaction_id");
- terminal windows: the terminal's transactions with time in (t - delay - w, t - delay],
  all same-second ones included; risk = confirmed frauds / count, 0 when empty.

State follows how the sidecar consumes: one `CustomerState` per Kafka input partition
(transactions are keyed by customer) and one `TerminalState` per instance, fed with
every transaction of every partition and every fraud confirmation. `OnlineFeatures`
holds both and returns the model's input matrix.

The sorted-run store both states build on, and the lateness rule, are in `store.py`;
the states in `customers.py` and `terminals.py`.

Out of order, within the allowed lateness, a transaction gets exactly the offline
features of the set of transactions seen so far (earlier batches and its own batch).
A transaction scored before a late, earlier one arrived is not re-scored.
"""

from __future__ import annotations

import numpy as np

from fraudscore.features.buckets import TerminalBuckets
from fraudscore.features.customers import CustomerState
from fraudscore.features.spec import BASELINE_SPEC, SECONDS_PER_DAY, FeatureSpec
from fraudscore.features.store import FOLD_MIN_ROWS, _columns, late_in_order
from fraudscore.features.terminals import LabelCounts, TerminalState
from fraudscore.features.windows import calendar_features, derived_features

__all__ = ["FOLD_MIN_ROWS", "CustomerState", "LabelCounts", "OnlineFeatures", "TerminalBuckets", "TerminalState",
           "late_in_order", "terminal_state"]


def terminal_state(spec: FeatureSpec = BASELINE_SPEC, *, allowed_lateness_s: int = SECONDS_PER_DAY,
                   fold_min_rows: int = FOLD_MIN_ROWS) -> TerminalState | TerminalBuckets:
    """The terminal state `spec` calls for: every transaction (`TerminalState`) at the exact
    1 s resolution, per-terminal bucket counts (`TerminalBuckets`) at a coarser one."""
    kind = TerminalState if spec.terminal_resolution_s == 1 else TerminalBuckets
    return kind(spec, allowed_lateness_s=allowed_lateness_s, fold_min_rows=fold_min_rows)


class OnlineFeatures:
    """The model's input matrix, batch by batch: one CustomerState per partition, one TerminalState.

    Example:
        >>> online = OnlineFeatures()
        >>> batch = dict(ids=[1, 2], seconds=[1_522_540_800, 1_522_540_900], customers=[4, 4], terminals=[9, 8], amounts=[12.5, 7.5])
        >>> late = online.late_mask(0, batch["seconds"])  # dead-letter these rows instead of scoring them
        >>> x = online.features(0, **batch)
        >>> x.shape, float(x[1, online.spec.names.index("CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW")])
        ((2, 15), 10.0)
        >>> online.add_labels(ids=[1], seconds=[1_522_540_800], terminals=[9]).applied
        1

    `features` stores the batch in the partition's customer state and in the terminal
    state, then returns float64 rows x `spec.names`: the columns `baseline_features`
    gives. The terminal state must see every partition's transactions: feed those this
    instance does not score through `terminals.add_transactions`. To restore a
    partition after a restart or a rebalance, replay it through `add`.
    `allowed_lateness_s` bounds how far event time may go backwards within a partition;
    `terminal_lateness_s` (default: the same) must also cover the skew between
    partitions, because the terminal state's watermark is the newest time of any.
    """

    def __init__(
        self,
        spec: FeatureSpec = BASELINE_SPEC,
        *,
        allowed_lateness_s: int = SECONDS_PER_DAY,
        terminal_lateness_s: int | None = None,
        fold_min_rows: int = FOLD_MIN_ROWS,
    ):
        self.spec = spec
        self.allowed_lateness_s = allowed_lateness_s
        self.fold_min_rows = fold_min_rows
        self.terminals = terminal_state(
            spec,
            allowed_lateness_s=allowed_lateness_s if terminal_lateness_s is None else terminal_lateness_s,
            fold_min_rows=fold_min_rows,
        )
        self.customers: dict[int, CustomerState] = {}

    def partition(self, partition: int) -> CustomerState:
        """The customer state of `partition`, created empty on first use."""
        state = self.customers.get(partition)
        if state is None:
            state = self.customers[partition] = CustomerState(
                self.spec, allowed_lateness_s=self.allowed_lateness_s, fold_min_rows=self.fold_min_rows
            )
        return state

    def drop_partition(self, partition: int) -> None:
        """Forget a revoked partition's customer state."""
        self.customers.pop(partition, None)

    def late_mask(self, partition: int, seconds: np.ndarray) -> np.ndarray:
        """True where a row is too late for the partition's customer windows or for the terminal windows."""
        return self.partition(partition).late_mask(seconds) | self.terminals.late_mask(seconds)

    def add(self, partition: int, ids: np.ndarray, seconds: np.ndarray, customers: np.ndarray, terminals: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """Store transactions without scoring them (replay); returns which were new to the partition."""
        self.terminals.add_transactions(ids, seconds, terminals)
        return self.partition(partition).add(ids, seconds, customers, amounts)

    def add_labels(self, ids: np.ndarray, seconds: np.ndarray, terminals: np.ndarray) -> LabelCounts:
        """Fraud confirmations; see `TerminalState.add_labels`."""
        return self.terminals.add_labels(ids, seconds, terminals)

    def features(self, partition: int, ids: np.ndarray, seconds: np.ndarray, customers: np.ndarray, terminals: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """Store the batch, then its feature matrix: float64, rows x `spec.names`."""
        ids, seconds, customers, terminals, amounts = _columns(amounts, ids=ids, seconds=seconds, customers=customers, terminals=terminals)
        columns: dict[str, np.ndarray] = {"TX_AMOUNT": amounts}
        columns.update(calendar_features(seconds, self.spec))
        columns.update(self.partition(partition).features(ids, seconds, customers, amounts))
        columns.update(self.terminals.add_and_features(ids, seconds, terminals)[1])
        return self._matrix(columns, len(ids))

    def features_of_partitions(self, partitions: np.ndarray, ids: np.ndarray, seconds: np.ndarray, customers: np.ndarray,
                               terminals: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """Like `features`, for a batch spread over several partitions (`partitions[i]` is row
        i's), when the terminal state is fed by its own reader (the sidecar's terminal table
        reads every partition): each partition's customer windows store their rows; the
        terminal state is only asked."""
        ids, seconds, customers, terminals, amounts = _columns(amounts, ids=ids, seconds=seconds, customers=customers, terminals=terminals)
        if not len(ids):  # every row rejected or late
            return np.empty((0, len(self.spec.names)), np.float64)
        columns: dict[str, np.ndarray] = {"TX_AMOUNT": amounts}
        columns.update(calendar_features(seconds, self.spec))
        columns.update(self.terminals.features(seconds, terminals))
        partitions = np.asarray(partitions, dtype=np.int64)
        for p in np.unique(partitions).tolist():
            rows = np.flatnonzero(partitions == p)
            for name, values in self.partition(p).features(ids[rows], seconds[rows], customers[rows], amounts[rows]).items():
                columns.setdefault(name, np.empty(len(ids), values.dtype))[rows] = values
        return self._matrix(columns, len(ids))

    def _matrix(self, columns: dict[str, np.ndarray], n: int) -> np.ndarray:
        columns.update(derived_features(columns, self.spec))
        out = np.empty((n, len(self.spec.names)), np.float64)
        for j, name in enumerate(self.spec.names):
            out[:, j] = columns[name]
        return out

    def evict(self) -> int:
        """Fold and evict every state now; returns rows dropped."""
        return self.terminals.evict() + sum(state.evict() for state in self.customers.values())

    @property
    def nbytes(self) -> int:
        """Bytes of state held, all partitions and the terminal state together."""
        return self.terminals.nbytes + sum(state.nbytes for state in self.customers.values())
