"""Terminal windows at a coarse resolution: per-terminal counts per time bucket, not rows.

With `FeatureSpec.terminal_resolution_s` = r > 1 s (whole hours dividing a day) a terminal
window of w days ends at t - delay rounded down to a multiple of r, so it is made of whole
buckets (k r - r, k r]. Then a terminal needs only, per bucket, how many transactions it
saw and how many of them were confirmed frauds: `TerminalBuckets` keeps those counts as
prefix sums along the buckets, one row per terminal, and a window is two lookups. Memory
is terminals x buckets (`columns_needed`), whatever the traffic: at r = 1 day 41 buckets,
384 B per terminal ((41 + 1/8 room + 1) prefix columns x 2 counts x 4 B; rows are reserved
up to 1.5x ahead, and terminals with nothing left are dropped once they are a quarter of
them). While a caller holds eviction back (`horizon_cap`) the columns grow with event
time, up to MAX_WIDTH_FACTOR x; rows that would need more are not counted. The exact
store (`terminals.TerminalState`) holds ~17-21 B per retained transaction instead. Counts
are int32: one terminal may take up to 2**31 - 1 transactions in the buckets held (~630 a
second on that terminal, sustained for 39 days).

What the counts cannot do, and how the caller makes up for it:
- A transaction cannot be recognised when it comes again, so `add_transactions` counts
  every row it is given: the caller feeds each one once (the sidecar's terminal table
  reads every offset once and snapshots the offsets with the counts). A transaction id
  written twice to the input (a producer's retry without idempotence, `fraudscore dlq
  replay` of a row the table had counted) is counted twice, where the exact store
  counts it once.
- A confirmation is counted in its bucket (id, event time and terminal name it) without
  finding its transaction: at once when a transaction at or after its time has been
  counted, else it waits until one has (no window can reach it before). Confirmations
  are told apart by id (duplicates are not counted twice) as long as their bucket is
  held. A confirmation of a transaction that never reaches the input (or was
  dead-lettered as late) still counts, where the exact store would hold it pending until
  it expires; a share of frauds is capped at 1.
Given the same transactions and confirmations, the windows equal the offline engine's at
the same resolution (`baseline.baseline_features`), exactly: both count whole buckets.
"""

from __future__ import annotations

import numpy as np

from fraudscore.errors import InputError
from fraudscore.features.spec import BASELINE_SPEC, SECONDS_PER_DAY, FeatureSpec, terminal_count_name, terminal_risk_name
from fraudscore.features.store import FOLD_MIN_ROWS, _columns, _EventTimes
from fraudscore.features.terminals import LabelCounts, label_columns
from fraudscore.features.windows import fraud_shares

MAX_WIDTH_FACTOR = 4
"""Columns held never exceed this many times those on-time queries need (see `_count`)."""


def _member(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Which of `values` are in `among` (sorted for the confirmed ids, any order for the pending)."""
    return np.isin(values, among) if len(among) else np.zeros(len(values), bool)


def columns_needed(spec: FeatureSpec, allowed_lateness_s: int) -> int:
    """Buckets a terminal keeps: every bucket an on-time query can reach (reach + lateness), the
    bucket being filled, and one more for the rounding at each end."""
    r = spec.terminal_resolution_s
    return -(-(spec.terminal_reach_s + allowed_lateness_s) // r) + 2


class BucketCounts:
    """Per-terminal counts by time bucket, as prefix sums along the buckets: `counts[row, j]`
    transactions (`frauds[row, j]` confirmed frauds) of a terminal in columns < j, column 0
    being bucket `base`; terminal ids map to rows (`ids` sorted, `rows` theirs). Rows are
    reserved up to 1.5x ahead; `drop_idle` forgets terminals with nothing left, once they are
    a quarter of them. What to keep and when is `TerminalBuckets`'s."""

    def __init__(self, width: int):
        self.base: int | None = None  # the bucket number of column 0
        self.width = width
        self.ids = np.empty(0, np.int64)
        self.rows = np.empty(0, np.int64)
        self.used = 0
        self.counts = np.zeros((0, width + 1), np.int32)
        self.frauds = np.zeros((0, width + 1), np.int32)

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes + self.frauds.nbytes + self.ids.nbytes + self.rows.nbytes

    def transactions(self) -> int:
        """Transactions counted in the buckets held."""
        return int(self.counts[:self.used, -1].sum(dtype=np.int64))

    def entities(self) -> int:
        """Terminals with a transaction in the buckets held."""
        return int((self.counts[:self.used, -1] > 0).sum())

    def add(self, matrix: str, columns: np.ndarray, terminals: np.ndarray) -> None:
        """One more in `matrix` ("counts" or "frauds") at each row's column (all within the width)."""
        rows = self.lookup(terminals, create=True)
        touched, inverse = np.unique(rows, return_inverse=True)
        start = int(columns.min())
        delta = np.zeros((len(touched), self.width - start), np.int32)
        np.add.at(delta, (inverse, columns - start), 1)
        getattr(self, matrix)[touched, start + 1:] += np.cumsum(delta, axis=1, dtype=np.int32)

    def window(self, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Transactions and frauds of `rows` in columns [lo, hi), as int64."""
        return (self.counts[rows, hi].astype(np.int64) - self.counts[rows, lo],
                self.frauds[rows, hi].astype(np.int64) - self.frauds[rows, lo])

    def widen(self, columns: int, before: bool = False) -> None:
        """Add `columns` empty buckets after the last one, or `before` the first."""
        if before:  # prefix sums start at 0: the new buckets are zeros in front
            pad = lambda m: np.concatenate([np.zeros((len(m), columns), np.int32), m], axis=1)  # noqa: E731
        else:  # and end at the total: repeat the last column
            pad = lambda m: np.concatenate([m, np.repeat(m[:, -1:], columns, axis=1)], axis=1)  # noqa: E731
        self.counts, self.frauds = pad(self.counts), pad(self.frauds)
        self.width += columns

    def shift(self, keep_from: int) -> int:
        """Drop the buckets before `keep_from` (which becomes `base`); returns the transactions they held."""
        d = min(keep_from - self.base, self.width)
        dropped = int(self.counts[:self.used, d].sum(dtype=np.int64))
        for m in (self.counts, self.frauds):
            moved = m[:, d:] - m[:, d:d + 1]
            m[:, :self.width + 1 - d] = moved
            m[:, self.width + 1 - d:] = moved[:, -1:]
        self.base = keep_from
        return dropped

    def trim(self, columns: int) -> None:
        """Give back the last `columns` buckets (empty past the newest)."""
        self.counts = self.counts[:, :self.width + 1 - columns].copy()
        self.frauds = self.frauds[:, :self.width + 1 - columns].copy()
        self.width -= columns

    def drop_idle(self) -> None:
        """Forget terminals with nothing left in the buckets held, once they are a quarter of the rows."""
        used = self.used
        idle = (self.counts[:used, -1] == 0) & (self.frauds[:used, -1] == 0)
        if not used or idle.sum() * 4 < used:
            return
        alive = np.flatnonzero(~idle)
        renumber = np.full(used, -1, np.int64)
        renumber[alive] = np.arange(len(alive))
        self.counts = self.counts[alive].copy()
        self.frauds = self.frauds[alive].copy()
        self.used = len(alive)
        new_rows = renumber[self.rows]
        keep = new_rows >= 0
        self.ids, self.rows = self.ids[keep], new_rows[keep]

    def lookup(self, terminals: np.ndarray, create: bool) -> np.ndarray:
        """Rows of `terminals` in the matrices; new terminals get rows if `create`, else -1."""
        at = np.searchsorted(self.ids, terminals)
        known = at < len(self.ids)
        known[known] = self.ids[at[known]] == terminals[known]
        rows = np.full(len(terminals), -1, np.int64)
        rows[known] = self.rows[at[known]]
        if create and not known.all():
            fresh, inverse = np.unique(terminals[~known], return_inverse=True)
            numbers = self.used + np.arange(len(fresh), dtype=np.int64)
            self._reserve(self.used + len(fresh))
            self.used += len(fresh)
            rows[~known] = numbers[inverse]
            where = np.searchsorted(self.ids, fresh)
            self.ids = np.insert(self.ids, where, fresh)
            self.rows = np.insert(self.rows, where, numbers)
        return rows

    def _reserve(self, rows: int) -> None:
        if rows <= len(self.counts):
            return
        capacity = max(rows, len(self.counts) * 3 // 2, 1024)
        for name in ("counts", "frauds"):
            old = getattr(self, name)
            new = np.zeros((capacity, self.width + 1), np.int32)
            new[:len(old)] = old
            setattr(self, name, new)


class TerminalBuckets(_EventTimes):
    """The terminal windows (`TerminalState`'s interface) as per-terminal bucket counts.

    Example:
        >>> from fraudscore.features.spec import FeatureSpec
        >>> day = 86_400
        >>> state = TerminalBuckets(FeatureSpec(terminal_resolution_s=day))
        >>> state.add_transactions(ids=[1, 2, 3], seconds=[5, 10, day + 5], terminals=[3, 3, 3]).tolist()
        [True, True, True]
        >>> state.add_labels(ids=[2], seconds=[10], terminals=[3])
        LabelCounts(applied=1, pending=0, expired=0, duplicate=0)
        >>> f = state.features(seconds=[8 * day + 20], terminals=[3])  # ends at day 1 (t - 7 days, rounded down)
        >>> f["TERMINAL_ID_NB_TX_1DAY_WINDOW"].tolist(), f["TERMINAL_ID_RISK_1DAY_WINDOW"].tolist()
        ([2], [0.5])
    """

    def __init__(self, spec: FeatureSpec = BASELINE_SPEC, *, allowed_lateness_s: int = SECONDS_PER_DAY,
                 fold_min_rows: int = FOLD_MIN_ROWS):
        if spec.terminal_resolution_s == 1:
            raise InputError("TerminalBuckets needs a terminal resolution above 1 s; use TerminalState for exact windows")
        if allowed_lateness_s < 0:
            raise InputError(f"allowed_lateness_s must be >= 0 seconds, got {allowed_lateness_s}")
        del fold_min_rows  # nothing to fold: counts go straight into their bucket
        self.spec = spec
        self.reach_s = spec.terminal_reach_s
        self.allowed_lateness_s = int(allowed_lateness_s)
        self.watermark: int | None = None
        self.horizon_cap: int | None = None  # as `TerminalState.horizon_cap`: eviction never passes it
        self.evicted_through: int | None = None
        self.labels = LabelCounts()
        self._r = spec.terminal_resolution_s
        width = columns_needed(spec, self.allowed_lateness_s)
        self._target_width = width + -(-width // 8)  # room to move ahead before the columns shift
        self._m = BucketCounts(self._target_width)
        self._first: int | None = None
        # Confirmations counted, sorted by id, with their event times (to forget them with their bucket).
        self._confirmed = np.empty(0, np.int64)
        self._confirmed_seconds = np.empty(0, np.int64)
        # Confirmations newer than the watermark: (ids, seconds, terminals).
        self._pending = (np.empty(0, np.int64),) * 3

    # ------------------------------------------------------------------ what the sidecar reads

    def __len__(self) -> int:
        """Transactions counted in the buckets held."""
        return self._m.transactions()

    @property
    def nbytes(self) -> int:
        """Bytes held in numpy arrays (allocated rows included)."""
        return self._m.nbytes + self._confirmed.nbytes + self._confirmed_seconds.nbytes + sum(a.nbytes for a in self._pending)

    @property
    def entities(self) -> int:
        """Terminals with a transaction in the buckets held."""
        return self._m.entities()

    @property
    def pending_labels(self) -> int:
        """Confirmations newer than every transaction so far, waiting for one to pass them."""
        return len(self._pending[0])

    # ------------------------------------------------------------------ updates

    def add_transactions(self, ids: np.ndarray, seconds: np.ndarray, terminals: np.ndarray,
                         queried_from: int | None = None) -> np.ndarray:
        """Count the transactions in their buckets; every row counts (feed each once). Returns
        which rows were counted: not those that no on-time query can reach once this batch is
        in (older than its newest time less the reach and the lateness, unless `horizon_cap`
        or queries of this batch from event time `queried_from` on need them)."""
        ids, seconds, terminals = _columns(ids=ids, seconds=seconds, terminals=terminals)
        if not len(ids):
            return np.zeros(0, bool)
        newest = int(seconds.max())
        newest = newest if self.watermark is None else max(self.watermark, newest)
        keep_after = self._horizon_at(newest)
        if queried_from is not None:
            keep_after = min(keep_after, queried_from - self.reach_s)
        counted = self._count("counts", seconds, terminals, keep_after)
        if counted.any():
            oldest = int(seconds[counted].min())
            self._first = oldest if self._first is None else min(self._first, oldest)
        if len(self._pending[0]):
            self._release_pending(newest, keep_after)
        self.watermark = newest
        return counted

    def add_and_features(self, ids: np.ndarray, seconds: np.ndarray, terminals: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`add_transactions`, then `features` of the same rows."""
        (seconds,) = _columns(seconds=seconds)
        queried_from = int(seconds.min()) if len(seconds) else None
        counted = self.add_transactions(ids, seconds, terminals, queried_from)
        return counted, self.features(seconds, terminals)

    def _horizon_at(self, watermark: int) -> int:
        """`horizon` under watermark `watermark`."""
        own = watermark - self.reach_s - self.allowed_lateness_s
        return own if self.horizon_cap is None else min(own, self.horizon_cap)

    def add_labels(self, ids: np.ndarray, seconds: np.ndarray, terminals: np.ndarray) -> LabelCounts:
        """Count fraud confirmations (id, event time, terminal) in their buckets; see the module.
        One newer than every transaction so far waits (pending) until a transaction passes it:
        no window can reach it before, and its bucket may not be held yet."""
        ids, seconds, terminals, first = label_columns(ids, seconds, terminals)
        counts = LabelCounts()
        if not len(ids):
            return counts
        seen = _member(ids, self._confirmed) | _member(ids, self._pending[0])
        counts.duplicate = int((~first | seen).sum())
        fresh = first & ~seen
        horizon = self.horizon
        expired = fresh & (seconds <= horizon) if horizon is not None else np.zeros(len(ids), bool)
        live = fresh & ~expired
        ahead = live & (seconds > self.watermark) if self.watermark is not None else live
        if ahead.any():
            self._pending = tuple(np.concatenate([held, new[ahead]]) for held, new in zip(self._pending, (ids, seconds, terminals)))
            counts.pending = int(ahead.sum())
        applied = self._apply(ids[live & ~ahead], seconds[live & ~ahead], terminals[live & ~ahead])
        counts.applied = applied
        counts.expired = int(expired.sum()) + int((live & ~ahead).sum()) - applied
        self.labels.applied += counts.applied
        self.labels.pending += counts.pending
        self.labels.expired += counts.expired
        self.labels.duplicate += counts.duplicate
        return counts

    def _apply(self, ids: np.ndarray, seconds: np.ndarray, terminals: np.ndarray, keep_after: int | None = None) -> int:
        """Count confirmations in their buckets and remember their ids; how many were counted."""
        if not len(ids):
            return 0
        counted = self._count("frauds", seconds, terminals, self.horizon if keep_after is None else keep_after)
        ids, seconds = ids[counted], seconds[counted]
        order = np.argsort(ids)
        where = np.searchsorted(self._confirmed, ids[order])
        self._confirmed = np.insert(self._confirmed, where, ids[order])
        self._confirmed_seconds = np.insert(self._confirmed_seconds, where, seconds[order])
        return len(ids)

    def _release_pending(self, newest: int, keep_after: int) -> None:
        """Count the pending confirmations the transactions up to event time `newest` have passed."""
        ids, seconds, terminals = self._pending
        due = seconds <= newest
        if not due.any():
            return
        self._pending = (ids[~due], seconds[~due], terminals[~due])
        applied = self._apply(ids[due], seconds[due], terminals[due], keep_after)
        self.labels.pending -= int(due.sum())
        self.labels.applied += applied
        self.labels.expired += int(due.sum()) - applied

    def evict(self) -> int:
        """Drop the buckets no on-time query can reach now; returns the transactions they held."""
        if self._m.base is None or self.horizon is None:
            return 0
        return self._shift(self._keep_from())

    # ------------------------------------------------------------------ queries

    def features(self, seconds: np.ndarray, terminals: np.ndarray) -> dict[str, np.ndarray]:
        """The terminal window features of transactions at `seconds` on `terminals` (counts int64, risks float64)."""
        seconds, terminals = _columns(seconds=seconds, terminals=terminals)
        n = len(seconds)
        m = self._m
        rows = m.lookup(terminals, create=False)
        known = rows >= 0
        out = {}
        # The window's last bucket: its end is t - delay rounded down to the resolution.
        last = self.spec.terminal_window_ends(seconds) // self._r - (m.base or 0)
        for w in self.spec.terminal_windows_days:
            count = np.zeros(n, np.int64)
            frauds = np.zeros(n, np.int64)
            if known.any():
                hi = np.clip(last[known] + 1, 0, m.width)
                lo = np.clip(last[known] + 1 - w * SECONDS_PER_DAY // self._r, 0, m.width)
                count[known], frauds[known] = m.window(rows[known], lo, hi)
            out[terminal_count_name(w)] = count
            # A confirmation counted without its transaction (see the module) must not make a share above 1.
            out[terminal_risk_name(w)] = fraud_shares(np.minimum(frauds, count), count)
        return out

    # ------------------------------------------------------------------ snapshots

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The whole state as JSON-ready scalars and named arrays; `load_arrays` puts them back."""
        labels = self.labels
        scalars = {"watermark": self.watermark, "evicted_through": self.evicted_through, "first_event": self._first,
                   "base": self._m.base, "resolution_s": self._r,
                   "labels": [labels.applied, labels.pending, labels.expired, labels.duplicate]}
        m = self._m
        arrays = {"ids": m.ids, "rows": m.rows, "counts": m.counts[:m.used],
                  "frauds": m.frauds[:m.used], "confirmed.ids": self._confirmed,
                  "confirmed.seconds": self._confirmed_seconds, "pending.ids": self._pending[0],
                  "pending.seconds": self._pending[1], "pending.terminals": self._pending[2]}
        return scalars, arrays

    def load_arrays(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        """Take what `to_arrays` gave; InputError if it does not fit together."""
        try:
            ids, rows, counts, frauds, confirmed, confirmed_seconds = (
                np.asarray(arrays[name]) for name in ("ids", "rows", "counts", "frauds", "confirmed.ids", "confirmed.seconds"))
            pending = tuple(np.asarray(arrays[f"pending.{name}"]) for name in ("ids", "seconds", "terminals"))
            if int(scalars["resolution_s"]) != self._r:
                raise InputError(f"resolution {scalars['resolution_s']} s, this state counts {self._r} s buckets")
            watermark, evicted, first, base = (None if scalars[k] is None else int(scalars[k])
                                               for k in ("watermark", "evicted_through", "first_event", "base"))
            labels = LabelCounts(*(int(n) for n in scalars["labels"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"terminal bucket arrays incomplete or malformed ({type(exc).__name__}: {exc})") from None
        if (ids.dtype != np.int64 or rows.dtype != np.int64 or len(ids) != len(rows) or counts.ndim != 2
                or counts.dtype != np.int32 or frauds.dtype != np.int32 or counts.shape != frauds.shape
                or counts.shape[0] != len(ids) or counts.shape[1] < 2
                or (len(rows) and not np.array_equal(np.sort(rows), np.arange(len(rows))))
                or (len(ids) > 1 and not (np.diff(ids) > 0).all())):
            raise InputError("terminal bucket arrays: columns of other types, shapes or orders")
        if confirmed.dtype != np.int64 or confirmed_seconds.dtype != np.int64 or len(confirmed) != len(confirmed_seconds):
            raise InputError("confirmed frauds: columns of other types or lengths")
        if len(confirmed) > 1 and not (np.diff(confirmed) > 0).all():
            raise InputError("confirmed frauds: ids out of order")
        if len(ids) and (base is None or (counts[:, 0] != 0).any() or (np.diff(counts, axis=1) < 0).any()
                         or (frauds[:, 0] != 0).any() or (np.diff(frauds, axis=1) < 0).any()):
            raise InputError("terminal bucket counts: no first bucket, or prefix sums that do not start at 0 and grow")
        if any(a.dtype != np.int64 or len(a) != len(pending[0]) for a in pending):
            raise InputError("pending confirmations: columns of other types or lengths")
        self._pending = pending
        m = self._m
        m.ids, m.rows, m.used = ids, rows, len(ids)
        m.counts, m.frauds = np.ascontiguousarray(counts), np.ascontiguousarray(frauds)
        m.width, m.base = counts.shape[1] - 1, base
        self._confirmed, self._confirmed_seconds = confirmed, confirmed_seconds
        self.watermark, self.evicted_through, self._first = watermark, evicted, first
        self.labels = labels

    # ------------------------------------------------------------------ inside

    def _keep_from(self) -> int:
        """The oldest bucket an on-time query can still reach (under `horizon`)."""
        return self.horizon // self._r + 1

    def _count(self, matrix: str, seconds: np.ndarray, terminals: np.ndarray, keep_after: int | None) -> np.ndarray:
        """Add one to the matrix named `matrix` ("counts" or "frauds") in each row's bucket;
        which rows were counted (not those at or before `keep_after`: their buckets are gone or
        no on-time query reaches them)."""
        counted = seconds > keep_after if keep_after is not None else np.ones(len(seconds), bool)
        if not counted.all():
            seconds, terminals = seconds[counted], terminals[counted]
        if not len(seconds):
            return counted
        buckets = -(-seconds // self._r)  # (k r - r, k r] is bucket k
        # Memory stays bounded whatever the event times: while a caller holds eviction back
        # (`horizon_cap`), a row that would stretch the columns past MAX_WIDTH_FACTOR x what
        # on-time queries need (a years-old confirmation during a restore) is not counted.
        top = max(int(buckets.max()), -(-self.watermark // self._r) if self.watermark is not None else int(buckets.max()))
        fits = (buckets > top - self._target_width * MAX_WIDTH_FACTOR if self.horizon_cap is not None
                else np.ones(len(buckets), bool))
        if not fits.all():
            counted[np.flatnonzero(counted)[~fits]] = False
            buckets, terminals = buckets[fits], terminals[fits]
            if not len(buckets):
                return counted
        oldest, newest = int(buckets.min()), int(buckets.max())
        m = self._m
        if m.base is None:
            m.base = oldest
        elif oldest < m.base:  # older than anything held so far, and within the horizon
            m.widen(m.base - oldest, before=True)
            m.base = oldest
        if newest - m.base >= m.width:
            self._make_room(newest)
        m.add(matrix, buckets - m.base, terminals)
        return counted

    def _make_room(self, newest: int) -> None:
        """Columns up to bucket `newest`: drop the buckets nothing can reach, and widen if that is not enough."""
        if self.horizon is not None:
            self._shift(min(self._keep_from(), newest))
        m, limit = self._m, self._target_width * MAX_WIDTH_FACTOR
        if self.horizon_cap is not None and newest - m.base >= limit:  # a horizon cap held back this long gives way: memory first
            self._shift(newest - limit + 1)
        if newest - m.base >= m.width:
            m.widen(newest - m.base + 1 - m.width + -(-m.width // 8))

    def _shift(self, keep_from: int) -> int:
        """Drop the buckets before `keep_from`; returns the transactions they held."""
        m = self._m
        if keep_from - m.base <= 0:
            return 0
        dropped = m.shift(keep_from)
        # Give back the columns a held-back horizon made room for, past the newest bucket.
        spare = m.width - max(self._target_width, -(-self.watermark // self._r) - m.base + 1 if self.watermark is not None else 0)
        if spare > 0:
            m.trim(spare)
        through = (keep_from - 1) * self._r
        self.evicted_through = through if self.evicted_through is None else max(self.evicted_through, through)
        if len(self._confirmed):
            keep = self._confirmed_seconds > through
            self._confirmed, self._confirmed_seconds = self._confirmed[keep], self._confirmed_seconds[keep]
        m.drop_idle()
        return dropped
