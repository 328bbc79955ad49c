"""Terminal windows: counts and confirmed-fraud shares over 1, 7 and 30 days ending 7 days
before the transaction, over every partition's transactions and the fraud confirmations
(docs/data.md). Built on the sorted-run store (`store.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fraudscore.features.spec import BASELINE_SPEC, SECONDS_PER_DAY, FeatureSpec, terminal_count_name, terminal_risk_name
from fraudscore.features.store import _MISSING, _OFFSET, FOLD_MIN_ROWS, _columns, _Run, _Store, _unsorted
from fraudscore.features.windows import fraud_shares
from fraudscore.errors import InputError


def label_columns(ids, seconds, terminals) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A batch of fraud confirmations as checked int64 columns, and which rows are the first of
    their transaction id in the batch (a repeated id within it is a duplicate)."""
    ids, seconds, terminals = _columns(ids=ids, seconds=seconds, terminals=terminals)
    first = np.zeros(len(ids), bool)
    first[np.unique(ids, return_index=True)[1]] = True
    return ids, seconds, terminals, first


@dataclass
class LabelCounts:
    """What became of fraud confirmations (`TerminalState.add_labels`)."""

    applied: int = 0
    """Flagged a stored transaction as fraud."""
    pending: int = 0
    """Held because their transaction has not arrived yet; applied when it does."""
    expired: int = 0
    """At or before the retained horizon: they can no longer reach any window."""
    duplicate: int = 0
    """Already applied or already pending."""


class TerminalState(_Store):
    """The terminal windows, over every partition's transactions and the fraud confirmations.

    Example:
        >>> state = TerminalState()
        >>> day = 86_400
        >>> state.add_transactions(ids=[1, 2], seconds=[5, 10], terminals=[3, 3]).tolist()
        [True, True]
        >>> state.add_labels(ids=[2], seconds=[10], terminals=[3])
        LabelCounts(applied=1, pending=0, expired=0, duplicate=0)
        >>> f = state.features(seconds=[7 * day + 20], terminals=[3])  # window (20 s - 1 day, 20 s]
        >>> f["TERMINAL_ID_NB_TX_1DAY_WINDOW"].tolist(), f["TERMINAL_ID_RISK_1DAY_WINDOW"].tolist()
        ([2], [0.5])

    A confirmation names its transaction by (id, event time, terminal). It may come
    before the transaction (held pending, applied when the transaction arrives) or
    after it; one at or before `horizon` is ignored as expired, and a pending one
    expires once a fold finds it there. `labels` keeps running totals, its `pending`
    being the number held now. `features` stores nothing: add the transactions first
    (`add_and_features` does both and shares the work).
    """

    def __init__(self, spec: FeatureSpec = BASELINE_SPEC, *, allowed_lateness_s: int = SECONDS_PER_DAY, fold_min_rows: int = FOLD_MIN_ROWS):
        super().__init__(spec, spec.terminal_reach_s, allowed_lateness_s, fold_min_rows, np.int8)
        self._ranks_in_main = False  # windows end a delay back: they never need the batch's own place
        self.labels = LabelCounts()
        # Confirmed frauds of stored rows, not yet folded into the main run's fraud column.
        self._overlay = _Run.empty(np.int8)
        # Confirmations whose transaction has not arrived, sorted by id.
        self._pending_ids = np.empty(0, np.int64)
        self._pending_seconds = np.empty(0, np.int64)
        self._pending_terminals = np.empty(0, np.int64)

    @property
    def nbytes(self) -> int:
        pending = self._pending_ids.nbytes + self._pending_seconds.nbytes + self._pending_terminals.nbytes
        return super().nbytes + self._overlay.nbytes + pending

    @property
    def pending_labels(self) -> int:
        return len(self._pending_ids)

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        scalars, arrays = super().to_arrays()
        scalars["labels"] = [self.labels.applied, self.labels.pending, self.labels.expired, self.labels.duplicate]
        arrays.update({"pending.ids": self._pending_ids, "pending.seconds": self._pending_seconds,
                       "pending.terminals": self._pending_terminals})
        return scalars, arrays

    def load_arrays(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        super().load_arrays(scalars, arrays)
        try:
            pending = [np.asarray(arrays[f"pending.{name}"]) for name in ("ids", "seconds", "terminals")]
            self.labels = LabelCounts(*(int(n) for n in scalars["labels"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"terminal state arrays incomplete or malformed ({type(exc).__name__}: {exc})") from None
        if any(a.dtype != np.int64 or len(a) != len(pending[0]) for a in pending):
            raise InputError("pending confirmations: columns of other types or lengths")
        self._pending_ids, self._pending_seconds, self._pending_terminals = pending

    def _runs(self) -> dict[str, _Run]:
        return {"main": self._main, "recent": self._recent, "overlay": self._overlay}

    def _set_runs(self, runs: dict[str, _Run]) -> None:
        self._main, self._recent, self._overlay = runs["main"], runs["recent"], runs["overlay"]

    def add_transactions(self, ids: np.ndarray, seconds: np.ndarray, terminals: np.ndarray) -> np.ndarray:
        """Store the transactions not stored yet; returns which rows were new."""
        ids, seconds, terminals = _columns(ids=ids, seconds=seconds, terminals=terminals)
        if not len(ids):
            return np.zeros(0, bool)
        return self._insert(ids, seconds, terminals, np.zeros(len(ids), np.int8)).new

    def add_and_features(self, ids: np.ndarray, seconds: np.ndarray, terminals: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`add_transactions`, then `features` of the same rows; returns (which rows were new, features)."""
        ids, seconds, terminals = _columns(ids=ids, seconds=seconds, terminals=terminals)
        if not len(ids):
            return np.zeros(0, bool), self.features(seconds, terminals)
        batch = self._insert(ids, seconds, terminals, np.zeros(len(ids), np.int8))
        return batch.new, self._windows(batch.perm, batch.keys, seconds)

    def features(self, seconds: np.ndarray, terminals: np.ndarray) -> dict[str, np.ndarray]:
        """The terminal window features of transactions at `seconds` on `terminals` (counts int64, risks float64)."""
        seconds, terminals = _columns(seconds=seconds, terminals=terminals)
        if self._origin is None or not len(seconds):
            keys = np.full(len(seconds), _MISSING, np.int64)
        else:
            keys = self._keys(self._directory.lookup(terminals, create=False), seconds)
        perm = np.argsort(keys, kind="stable")
        return self._windows(perm, keys[perm], seconds)

    def _windows(self, perm: np.ndarray, keys: np.ndarray, seconds: np.ndarray) -> dict[str, np.ndarray]:
        """Window features of sorted query keys (of rows at `seconds`, in the caller's order),
        returned in the caller's order (`perm`)."""
        n = len(keys)
        window_ends = self.spec.terminal_window_ends(seconds)
        ends = keys - (seconds - window_ends)[perm]  # each key moved back to its window's end
        latest_end = int(window_ends.max()) if n else 0
        # Rows newer than every window's end cannot count: the recent run usually holds
        # only such rows (they arrived in the last days, the windows end a week back).
        parts = []
        for run in (self._main, self._recent, self._overlay):
            if len(run) and run.oldest <= latest_end:
                parts.append((run, np.searchsorted(run.keys, ends, side="right")))
        out = {}
        for w in self.spec.terminal_windows_days:
            starts = ends - w * SECONDS_PER_DAY
            count = np.zeros(n, np.int64)
            frauds = np.zeros(n, np.int64)
            for run, end in parts:
                first = np.searchsorted(run.keys, starts, side="right")
                if run is self._overlay:  # one row per confirmed fraud
                    frauds += end - first
                    continue
                count += end - first
                if run is self._main:  # the recent run's frauds are all in the overlay
                    sums = run.fraud_sums()
                    frauds += sums[end] - sums[first]
            out[terminal_count_name(w)] = _unsorted(perm, count)
            out[terminal_risk_name(w)] = _unsorted(perm, fraud_shares(frauds, count))
        return out

    def add_labels(self, ids: np.ndarray, seconds: np.ndarray, terminals: np.ndarray) -> LabelCounts:
        """Record fraud confirmations of transactions (id, event time, terminal); returns what became of them."""
        ids, seconds, terminals, first = label_columns(ids, seconds, terminals)
        counts = LabelCounts()
        if not len(ids):
            return counts
        counts.duplicate += int((~first).sum())
        horizon = self.horizon
        expired = first & (seconds <= horizon) if horizon is not None else np.zeros(len(ids), bool)
        counts.expired += int(expired.sum())
        live = np.flatnonzero(first & ~expired)
        ids, seconds, terminals = ids[live], seconds[live], terminals[live]
        if self._origin is None or not len(live):  # no transaction yet: every confirmation waits
            keys = np.full(len(live), _MISSING, np.int64)
        else:
            keys = self._keys(self._directory.lookup(terminals, create=False), seconds)
        oldest = int(seconds.min()) if len(live) else 0
        rank_main, in_main = self._main.rank(keys, ids, oldest)
        _, in_recent = self._recent.rank(keys, ids, oldest)
        _, flagged = self._overlay.rank(keys, ids, oldest)
        flagged[in_main] |= self._main.values[rank_main[in_main] - 1] == 1
        stored = in_main | in_recent
        apply = stored & ~flagged
        counts.duplicate += int((stored & flagged).sum())
        self._flag(keys[apply], ids[apply])
        counts.applied += int(apply.sum())
        waiting = np.flatnonzero(~stored)
        if waiting.size:
            at = np.searchsorted(self._pending_ids, ids[waiting])
            held = at < len(self._pending_ids)
            held[held] = self._pending_ids[at[held]] == ids[waiting][held]
            counts.duplicate += int(held.sum())
            hold = waiting[~held]
            hold = hold[np.argsort(ids[hold])]  # np.insert keeps the given order at equal positions
            counts.pending += len(hold)
            where = np.searchsorted(self._pending_ids, ids[hold])
            self._pending_ids = np.insert(self._pending_ids, where, ids[hold])
            self._pending_seconds = np.insert(self._pending_seconds, where, seconds[hold])
            self._pending_terminals = np.insert(self._pending_terminals, where, terminals[hold])
        self.labels.applied += counts.applied
        self.labels.pending += counts.pending
        self.labels.expired += counts.expired
        self.labels.duplicate += counts.duplicate
        return counts

    def _flag(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Add confirmed frauds of stored rows to the overlay."""
        if not len(keys):
            return
        order = np.lexsort((ids, keys))
        keys, ids = keys[order], ids[order]
        rank, _ = self._overlay.rank(keys, ids, -(1 << 62))
        times = (keys & _OFFSET) + self._origin
        self._overlay = self._overlay.merged(keys, ids, np.ones(len(keys), np.int8), rank, int(times.max()), int(times.min()))

    def _on_insert(self, keys: np.ndarray, ids: np.ndarray, seconds: np.ndarray, entities: np.ndarray) -> None:
        if not len(self._pending_ids):
            return
        at = np.searchsorted(self._pending_ids, ids)
        hit = at < len(self._pending_ids)
        hit[hit] = self._pending_ids[at[hit]] == ids[hit]
        # The confirmation must name the same transaction: same time and terminal too.
        hit[hit] &= (self._pending_seconds[at[hit]] == seconds[hit]) & (self._pending_terminals[at[hit]] == entities[hit])
        if hit.any():
            self._flag(keys[hit], ids[hit])
            self._drop_pending(at[hit])
            self.labels.applied += int(hit.sum())
            self.labels.pending -= int(hit.sum())

    def _drop_pending(self, where: np.ndarray) -> None:
        keep = np.ones(len(self._pending_ids), bool)
        keep[where] = False
        self._pending_ids = self._pending_ids[keep]
        self._pending_seconds = self._pending_seconds[keep]
        self._pending_terminals = self._pending_terminals[keep]

    def _fold_labels(self, main: _Run) -> _Run:
        overlay = self._overlay
        if len(overlay):
            rank, found = main.rank(overlay.keys, overlay.ids, -(1 << 62))
            if not found.all():
                raise AssertionError("a confirmed fraud lost its transaction")  # overlay rows are stored rows
            main.values[rank - 1] = 1
            main._prefix = None
        self._overlay = _Run.empty(np.int8)
        return main

    def _on_fold(self, horizon: int | None) -> None:
        if horizon is None or not len(self._pending_ids):
            return
        stale = np.flatnonzero(self._pending_seconds <= horizon)
        if stale.size:
            self._drop_pending(stale)
            self.labels.expired += len(stale)
            self.labels.pending -= len(stale)
