"""The sorted-run store under both online states (customer windows, terminal windows).

Layout. A store keeps rows sorted by (key, id), key = slot * 2**34 + (time - origin),
where slot is the customer or terminal id itself when it lies in [0, 2**28) and a
number handed out in first-seen order otherwise (hashed card numbers). A window is then
a key range found with `searchsorted`, counted with prefix sums (`windows.py`, shared
with the offline engine). Rewriting the whole store for every batch would cost more
than the queries, so rows go into a small sorted `recent` run and are folded into the
large `main` run when `recent` reaches max(fold_min_rows, len(main) / 8); queries add
up both runs. Fraud confirmations go to a third small run (the overlay), folded the
same way, so a label never rewrites the main run's prefix sums. Each batch is searched
in key order: sorted needles make `searchsorted` several times faster.

Lateness and memory. Each state's `watermark` is the largest event time it has been
given. A row older than watermark - allowed_lateness is too late: `late_mask` finds
those rows (against the watermark before their batch) so the caller can dead-letter
them rather than score them with windows that eviction may have cut. A fold, at the
start of `add`/`features` when `recent` is full or on `evict()`, drops rows that no
query within the allowed lateness can reach: time <= watermark - reach -
allowed_lateness, reach = the largest customer window (30 days), or the terminal delay
plus the largest terminal window (7 + 30 days). So eviction never changes an on-time
row's features, whenever it runs; and given the same batches in the same order it runs
at the same points, so replaying a partition from its start rebuilds the same state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fraudscore.errors import InputError
from fraudscore.features.spec import SECONDS_PER_DAY, FeatureSpec
from fraudscore.features.windows import cent_sums

# key = slot * 2**_SHIFT + (seconds - origin), origin = first event time seen - _HEADROOM.
# 2**34 s is 544 years: times from 136 years before the first one seen to 408 years after
# it fit, and slots below 2**29 keep keys inside int64.
_SHIFT = 34
_STRIDE = 1 << _SHIFT
_OFFSET = _STRIDE - 1  # mask: the time part of a key
_HEADROOM = 1 << 32
_DIRECT = 1 << 28  # ids in [0, _DIRECT) are their own slot: no lookup table, no search
_MAX_SLOT = (1 << 29) - 1
# Far below every real key, and stays so after subtracting any window: an unknown
# terminal finds empty windows.
_MISSING = -(1 << 62)

FOLD_MIN_ROWS = 16_384
"""Default size at which the recent run is folded into the main run (old rows are evicted then)."""


class _Run:
    """Rows sorted by (key, id), with prefix sums of `values` computed when first needed.

    Once a run's amounts have exact cent sums, the sums are all it keeps: the amounts are
    their differences (`values` gives them back as cents / 100, whose cent sums are the
    same), so a customer row costs 24 bytes (key, id, sum) instead of 32.
    """

    __slots__ = ("_prefix", "_scale", "_values", "ids", "keys", "newest", "oldest")

    def __init__(self, keys: np.ndarray, ids: np.ndarray, values: np.ndarray, newest: int, oldest: int):
        self.keys, self.ids, self._values = keys, ids, values
        # Bounds on the rows' event times (not always tight): they let a query skip work.
        self.newest, self.oldest = newest, oldest
        self._prefix: np.ndarray | None = None
        self._scale = 1.0

    @classmethod
    def empty(cls, dtype: type) -> _Run:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, dtype), -(1 << 62), 1 << 62)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def values(self) -> np.ndarray:
        """The rows' values (for a run that kept only its cent sums: rebuilt from them, a new array)."""
        if self._values is None:
            return np.diff(self._prefix) / self._scale
        return self._values

    @property
    def nbytes(self) -> int:
        prefix = 0 if self._prefix is None else self._prefix.nbytes
        values = 0 if self._values is None else self._values.nbytes
        return self.keys.nbytes + self.ids.nbytes + values + prefix

    def amount_sums(self) -> tuple[np.ndarray, float]:
        """Prefix sums of amounts (exact cents when possible) and their scale."""
        if self._prefix is None:
            self._prefix, self._scale = cent_sums(self._values)
            if self._scale == 100.0:
                self._values = None  # the sums hold them
        return self._prefix, self._scale

    def fraud_sums(self) -> np.ndarray:
        if self._prefix is None:
            # int32: a run never holds 2**31 rows, and it is half the bytes of int64.
            self._prefix = np.concatenate([np.zeros(1, np.int32), np.cumsum(self._values, dtype=np.int32)])
        return self._prefix

    def rank(self, keys: np.ndarray, ids: np.ndarray, min_time: int) -> tuple[np.ndarray, np.ndarray]:
        """For each query (key, id): how many rows are <= it in (key, id) order, and whether it is a row.

        For a stored row, rank - (window start) is its window count with the
        same-second tie rule applied. Rows sharing a query's key (same entity, same
        second) are compared by id; they are rare, so they are expanded with
        `np.repeat` rather than searched. `min_time` (the earliest query time) skips
        that step when no stored row can share a second with a query.
        """
        n = len(keys)
        if not len(self.keys):
            return np.zeros(n, np.int64), np.zeros(n, bool)
        lo = np.searchsorted(self.keys, keys, side="left")
        found = np.zeros(n, bool)
        if min_time > self.newest:
            return lo, found
        hi = np.searchsorted(self.keys, keys, side="right")
        tied = np.flatnonzero(hi > lo)
        if tied.size:
            lens = (hi - lo)[tied]
            starts = np.cumsum(lens) - lens
            at = np.repeat(lo[tied] - starts, lens) + np.arange(int(lens.sum()))
            stored, query = self.ids[at], np.repeat(ids[tied], lens)
            lo[tied] += np.add.reduceat((stored <= query).astype(np.int64), starts)
            found[tied] = np.add.reduceat((stored == query).astype(np.int64), starts) > 0
        return lo, found

    def merged(self, keys: np.ndarray, ids: np.ndarray, values: np.ndarray, at: np.ndarray, newest: int, oldest: int) -> _Run:
        """A run with new rows inserted before positions `at`.

        The new rows are sorted by (key, id), none is stored yet, and their times lie
        in [oldest, newest].
        """
        if not len(keys):
            return self
        n, m = len(self.keys), len(keys)
        dest = at + np.arange(m)
        old = np.ones(n + m, bool)
        old[dest] = False
        columns = []
        for mine, theirs in ((self.keys, keys), (self.ids, ids), (self.values, values)):
            out = np.empty(n + m, mine.dtype)
            out[dest] = theirs
            out[old] = mine
            columns.append(out)
        return _Run(*columns, max(self.newest, newest), min(self.oldest, oldest))

    def taken(self, keep: np.ndarray) -> _Run:
        return _Run(self.keys[keep], self.ids[keep], self.values[keep], self.newest, self.oldest)


class _Directory:
    """Customer or terminal id -> slot.

    Ids in [0, 2**28) are their own slot. Others (negative, or large such as hashed
    card numbers) get slots from 2**28 up in first-seen order, renumbered densely at
    each fold so that the table holds only ids with retained rows.
    """

    def __init__(self) -> None:
        self.values = np.empty(0, np.int64)  # sorted
        self.slots = np.empty(0, np.int64)
        self.next_slot = _DIRECT

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.slots.nbytes

    def lookup(self, entities: np.ndarray, create: bool) -> np.ndarray:
        """Slots of `entities`; unknown ones get new slots if `create`, else -1."""
        mapped = np.flatnonzero((entities < 0) | (entities >= _DIRECT))
        if not mapped.size:
            return entities
        slots = entities.copy()
        values = entities[mapped]
        at = np.searchsorted(self.values, values)
        known = at < len(self.values)
        known[known] = self.values[at[known]] == values[known]
        found = np.full(len(values), -1, np.int64)
        found[known] = self.slots[at[known]]
        if create and not known.all():
            fresh, inverse = np.unique(values[~known], return_inverse=True)
            numbers = self.next_slot + np.arange(len(fresh), dtype=np.int64)
            if int(numbers[-1]) > _MAX_SLOT:
                raise InputError(
                    f"more than {_MAX_SLOT - _DIRECT + 1} customers or terminals with ids outside "
                    f"[0, {_DIRECT}) retained at once; lower allowed_lateness_s or map ids to smaller numbers"
                )
            found[~known] = numbers[inverse]
            where = np.searchsorted(self.values, fresh)
            self.values = np.insert(self.values, where, fresh)
            self.slots = np.insert(self.slots, where, numbers)
            self.next_slot += len(fresh)
        slots[mapped] = found
        return slots

    def renumbered(self, live: np.ndarray) -> None:
        """Keep only the sorted mapped slots `live`, renumbered from 2**28 in the same order."""
        at = np.searchsorted(live, self.slots)
        keep = at < len(live)
        keep[keep] = live[at[keep]] == self.slots[keep]
        self.values, self.slots = self.values[keep], _DIRECT + at[keep].astype(np.int64)
        self.next_slot = _DIRECT + len(live)


class _Batch(NamedTuple):
    """A batch after `_Store._insert`, in (key, id) order."""

    perm: np.ndarray  # sorts the caller's rows by (key, id)
    keys: np.ndarray
    ids: np.ndarray
    oldest: int  # earliest event time in the batch
    newest: int  # latest event time in the batch
    rank_main: np.ndarray | None  # `_Run.rank` in the main run, if the state asked for it
    rank_recent: np.ndarray  # `_Run.rank` in the recent run, the batch's new rows included
    new: np.ndarray  # which rows were new, in the caller's order


class _EventTimes:
    """Event-time bookkeeping both terminal forms and the customer state share: from `_first`,
    `watermark`, `reach_s`, `allowed_lateness_s` and `horizon_cap` (set by the subclass)."""

    _first: int | None
    watermark: int | None
    reach_s: int
    allowed_lateness_s: int
    horizon_cap: int | None

    @property
    def first_event(self) -> int | None:
        """The oldest event time this state has stored, evicted rows included (kept through
        snapshots); None while empty."""
        return self._first

    @property
    def coverage_s(self) -> int:
        """Seconds of event time this state has seen, from its oldest row to its watermark: history
        older than that never reached it (not retained, or not loaded). A window needs `reach_s`."""
        if self._first is None or self.watermark is None:
            return 0
        return max(0, self.watermark - self._first)

    @property
    def horizon(self) -> int | None:
        """Rows at or before this event time can reach no window within the allowed lateness."""
        if self.watermark is None:
            return None
        own = self.watermark - self.reach_s - self.allowed_lateness_s
        return own if self.horizon_cap is None else min(own, self.horizon_cap)

    def late_mask(self, seconds: np.ndarray) -> np.ndarray:
        """True where a row is too late to score: more than allowed_lateness older than the newest
        of the watermark and the rows before it (`late_in_order`, the one lateness rule).

        Ask it just before the batch's `features`: the watermark is then the one from
        before the batch.
        """
        return late_in_order(_int_column("seconds", seconds), self.watermark, self.allowed_lateness_s)


class _Store(_EventTimes):
    """What both states share: slots, keys, the two runs, folding and eviction."""

    _ranks_in_main = True  # whether queries need `_Batch.rank_main` (else it is skipped when possible)

    def __init__(self, spec: FeatureSpec, reach_s: int, allowed_lateness_s: int, fold_min_rows: int, dtype: type):
        if allowed_lateness_s < 0:
            raise InputError(f"allowed_lateness_s must be >= 0 seconds, got {allowed_lateness_s}")
        if fold_min_rows < 1:
            raise InputError(f"fold_min_rows must be >= 1, got {fold_min_rows}")
        self.spec = spec
        self.reach_s = reach_s
        self.allowed_lateness_s = int(allowed_lateness_s)
        self.fold_min_rows = int(fold_min_rows)
        self.watermark: int | None = None
        # Set by a caller whose queries lag this state's watermark (the sidecar's terminal
        # table reads every partition, some ahead of the partitions it scores): eviction
        # and label expiry then never pass this event time.
        self.horizon_cap: int | None = None
        # The latest horizon eviction has applied: rows at or before it may be gone.
        self.evicted_through: int | None = None
        self._dtype = dtype
        self._directory = _Directory()
        self._origin: int | None = None
        self._first: int | None = None  # the oldest event time ever stored (evicted rows included)
        self._main = _Run.empty(dtype)
        self._recent = _Run.empty(dtype)

    def __len__(self) -> int:
        """Rows stored (some may be due for eviction at the next fold)."""
        return len(self._main) + len(self._recent)

    @property
    def nbytes(self) -> int:
        """Bytes held in numpy arrays: rows, prefix sums, id table."""
        return self._main.nbytes + self._recent.nbytes + self._directory.nbytes

    @property
    def entities(self) -> int:
        """Customers or terminals with stored rows."""
        return len(np.union1d(_slots_of(self._main.keys), _slots_of(self._recent.keys)))

    def stored_mask(self, ids: np.ndarray, seconds: np.ndarray, entities: np.ndarray) -> np.ndarray:
        """True where the row (entity, time, id) is stored already: a redelivery, not a new transaction."""
        ids, seconds, entities = _columns(None, ids=ids, seconds=seconds, entities=entities)
        if not len(ids) or self._origin is None:
            return np.zeros(len(ids), bool)
        keys = self._keys(self._directory.lookup(entities, create=False), seconds)
        perm = _by_key(keys, ids)
        oldest = int(seconds.min())
        stored = self._main.rank(keys[perm], ids[perm], oldest)[1] | self._recent.rank(keys[perm], ids[perm], oldest)[1]
        out = np.empty(len(ids), bool)
        out[perm] = stored
        return out

    def evict(self) -> int:
        """Fold the recent rows into the main run now and drop rows no on-time query can reach; returns rows dropped."""
        return self._fold()

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The whole state as JSON-ready scalars and named arrays, for a snapshot; `load_arrays`
        puts them back. Nothing is folded or evicted first: a state rebuilt from them answers
        every query exactly as this one does, and folds at the same points afterwards."""
        scalars = {"watermark": self.watermark, "evicted_through": self.evicted_through, "origin": self._origin,
                   "first_event": self._first,
                   "next_slot": self._directory.next_slot,
                   "runs": {name: [run.newest, run.oldest] for name, run in self._runs().items()}}
        arrays = {"directory.values": self._directory.values, "directory.slots": self._directory.slots}
        for name, run in self._runs().items():
            arrays.update({f"{name}.keys": run.keys, f"{name}.ids": run.ids, f"{name}.values": run.values})
        return scalars, arrays

    def load_arrays(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        """Take the state `to_arrays` gave (of a state with this spec and lateness). InputError if
        the arrays do not fit together (a snapshot from another version, or damaged)."""
        try:
            runs = {}
            for name, (newest, oldest) in scalars["runs"].items():
                keys, ids, values = (np.asarray(arrays[f"{name}.{part}"]) for part in ("keys", "ids", "values"))
                dtype = np.int8 if name == "overlay" else self._dtype
                if keys.dtype != np.int64 or ids.dtype != np.int64 or values.dtype != dtype or not len(keys) == len(ids) == len(values):
                    raise InputError(f"run {name}: columns of other types or lengths")
                if len(keys) > 1 and not (np.diff(keys) >= 0).all():
                    raise InputError(f"run {name}: keys out of order")
                runs[name] = _Run(keys, ids, values, int(newest), int(oldest))
            if set(runs) != set(self._runs()):
                raise InputError(f"runs {sorted(runs)}, expected {sorted(self._runs())}")
            values, slots = np.asarray(arrays["directory.values"]), np.asarray(arrays["directory.slots"])
            if values.dtype != np.int64 or slots.dtype != np.int64 or len(values) != len(slots):
                raise InputError("directory: columns of other types or lengths")
            origin, watermark, evicted = scalars["origin"], scalars["watermark"], scalars["evicted_through"]
            next_slot = int(scalars["next_slot"])
            # Snapshots from before first_event was kept: the first batch's oldest row (the origin's base).
            first = scalars.get("first_event", None if origin is None else int(origin) + _HEADROOM)
            first = None if first is None else int(first)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"state arrays incomplete or malformed ({type(exc).__name__}: {exc})") from None
        self._directory.values, self._directory.slots, self._directory.next_slot = values, slots, next_slot
        self._origin = None if origin is None else int(origin)
        self._first = first
        self.watermark = None if watermark is None else int(watermark)
        self.evicted_through = None if evicted is None else int(evicted)
        self._set_runs(runs)

    def _runs(self) -> dict[str, _Run]:
        return {"main": self._main, "recent": self._recent}

    def _set_runs(self, runs: dict[str, _Run]) -> None:
        self._main, self._recent = runs["main"], runs["recent"]

    def _keys(self, slots: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        if self._origin is None:
            self._origin = int(seconds.min()) - _HEADROOM
        low, high = int(seconds.min()), int(seconds.max())
        # An offset below the reach would let a window reach into the previous slot's keys.
        if low - self._origin <= self.reach_s or high - self._origin > _OFFSET:
            bad = low if low - self._origin <= self.reach_s else high
            raise InputError(
                f"event time {bad} s is more than {_HEADROOM // (365 * SECONDS_PER_DAY)} years from the first one "
                f"this state saw ({self._origin + _HEADROOM} s); check the producer's TX_DATETIME"
            )
        return np.where(slots >= 0, (slots << _SHIFT) + (seconds - self._origin), _MISSING)

    def _insert(self, ids: np.ndarray, seconds: np.ndarray, entities: np.ndarray, values: np.ndarray) -> _Batch:
        """Store the rows not stored yet (n >= 1)."""
        # Fold first, under the watermark from before this batch: eviction then keeps all
        # that the batch's on-time rows (late_mask was asked just before) can reach.
        if len(self._recent) >= max(self.fold_min_rows, len(self._main) // 8):
            self._fold()
        keys = self._keys(self._directory.lookup(entities, create=True), seconds)
        perm = _by_key(keys, ids)
        keys, ids, seconds = keys[perm], ids[perm], seconds[perm]
        oldest, newest = int(seconds.min()), int(seconds.max())
        self._first = oldest if self._first is None else min(self._first, oldest)
        if self._ranks_in_main or oldest <= self._main.newest:
            rank_main, in_main = self._main.rank(keys, ids, oldest)
        else:  # the batch is newer than the main run: none of its rows can be stored there
            rank_main, in_main = None, np.zeros(len(keys), bool)
        rank_recent, in_recent = self._recent.rank(keys, ids, oldest)
        new = ~(in_main | in_recent)
        # A redelivery may repeat a row inside one batch: only the first copy is new.
        new[1:] &= (keys[1:] != keys[:-1]) | (ids[1:] != ids[:-1])
        rows = np.flatnonzero(new)
        if rows.size:
            self._recent = self._recent.merged(
                keys[rows], ids[rows], values[perm[rows]].astype(self._dtype, copy=False), rank_recent[rows],
                int(seconds[rows].max()), int(seconds[rows].min()),
            )
            self._on_insert(keys[rows], ids[rows], seconds[rows], entities[perm[rows]])
            # Every new row <= a query (in sorted order: at or before it; a later copy
            # of the same row is never the new one) now precedes it in the recent run.
            rank_recent = rank_recent + np.cumsum(new)
        self.watermark = newest if self.watermark is None else max(self.watermark, newest)
        was_new = np.empty(len(new), bool)
        was_new[perm] = new
        return _Batch(perm, keys, ids, oldest, newest, rank_main, rank_recent, was_new)

    def _on_insert(self, keys: np.ndarray, ids: np.ndarray, seconds: np.ndarray, entities: np.ndarray) -> None:
        """Hook for rows just stored (the terminal state applies pending labels)."""

    def _fold(self) -> int:
        before = len(self)
        recent = self._recent
        rank, _ = self._main.rank(recent.keys, recent.ids, recent.oldest)
        main = self._fold_labels(self._main.merged(recent.keys, recent.ids, recent.values, rank, recent.newest, recent.oldest))
        horizon = self.horizon
        if horizon is not None and len(main) and main.oldest <= horizon:
            main = main.taken((main.keys & _OFFSET) + self._origin > horizon)
            main.oldest = horizon + 1
        if horizon is not None:
            self.evicted_through = horizon if self.evicted_through is None else max(self.evicted_through, horizon)
        # Renumber the mapped slots densely (rows are sorted by slot, mapped ones last),
        # so the id table keeps only ids with rows left.
        tail = int(np.searchsorted(main.keys, _DIRECT << _SHIFT))
        slots = main.keys[tail:] >> _SHIFT
        boundary = np.flatnonzero(slots[1:] != slots[:-1]) + 1
        self._directory.renumbered(slots[np.concatenate([[0], boundary])] if len(slots) else slots)
        if len(slots):
            group = np.zeros(len(slots), np.int64)
            group[boundary] = 1
            main.keys[tail:] = ((_DIRECT + np.cumsum(group)) << _SHIFT) + (main.keys[tail:] & _OFFSET)
        self._main = main
        self._recent = _Run.empty(self._dtype)
        self._on_fold(horizon)
        return before - len(self)

    def _fold_labels(self, main: _Run) -> _Run:
        """Hook: the merged main run before eviction (the terminal state applies its labels)."""
        return main

    def _on_fold(self, horizon: int | None) -> None:
        """Hook after a fold (the terminal state expires pending labels)."""


def late_in_order(seconds: np.ndarray, watermark: int | None, lateness_s: int) -> np.ndarray:
    """The lateness rule, everywhere (scoring, restores, the sidecar's terminal table): row i is
    late when it is more than `lateness_s` older than the newest of `watermark` and rows 0..i-1.

    Arrival order, row by row, so the decision does not depend on how the rows were cut into
    batches: a restore replaying a partition in other batches rejects exactly the rows the
    live run rejected.

        >>> late_in_order(np.array([100, 10, 95, 20]), None, 50).tolist()
        [False, True, False, True]
    """
    if not len(seconds):
        return np.zeros(0, bool)
    start = np.iinfo(np.int64).min // 2 if watermark is None else watermark
    newest_before = np.maximum.accumulate(np.concatenate([[start], seconds[:-1]]))
    return seconds < newest_before - lateness_s


def _slots_of(keys: np.ndarray) -> np.ndarray:
    slots = keys >> _SHIFT
    return slots[np.concatenate([[True], slots[1:] != slots[:-1]])] if len(slots) else slots


def _by_key(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The permutation that sorts rows by (key, id)."""
    perm = np.argsort(keys, kind="stable")
    if len(perm) > 1:
        k, i = keys[perm], ids[perm]
        tie = k[1:] == k[:-1]
        if tie.any() and np.any(i[1:][tie] < i[:-1][tie]):
            perm = np.lexsort((ids, keys))
    return perm


def _unsorted(perm: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values computed in `perm` order, back in the caller's row order."""
    out = np.empty_like(values)
    out[perm] = values
    return out


def _int_column(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{name} must be a 1-D array, got shape {array.shape}")
    if array.dtype.kind not in "iu" and len(array):
        raise InputError(f"{name} must hold integers, got {array.dtype}")
    return array.astype(np.int64, copy=False)


def _columns(amounts: np.ndarray | None = None, **columns: np.ndarray) -> list[np.ndarray]:
    """The integer columns (then amounts, if given) as 1-D int64 (float64) arrays of one length."""
    arrays = [_int_column(name, values) for name, values in columns.items()]
    if amounts is not None:
        amount = np.asarray(amounts)
        if amount.ndim != 1 or (amount.dtype.kind not in "iuf" and len(amount)):
            raise InputError(f"amounts must be a 1-D array of numbers, got {amount.dtype} of shape {amount.shape}")
        arrays.append(amount.astype(np.float64, copy=False))
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise InputError(f"columns have different lengths: {', '.join(f'{n}={len(a)}' for n, a in zip([*columns, 'amounts'], arrays))}")
    return arrays


