"""What the sidecar reports about its batches besides metrics: rate-limited log lines
(`Throttled`), and the --score-from backfill that folds early transactions into the state
without a result (`Backfill`)."""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)


class Throttled:
    """Counts events for a log line: the first at once, then at most one line every
    `interval_s`, with the count since the last line.

    >>> clock = [0.0]
    >>> failures = Throttled(60.0, clock=lambda: clock[0])
    >>> failures.add(2), failures.add(1)     # the first is logged at once, the next is held
    (2, 0)
    >>> clock[0] = 61.0
    >>> failures.add(4)                      # the interval passed: what was held, and this
    5
    """

    def __init__(self, interval_s: float, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self.since = 0
        self.last = -float("inf")

    def add(self, count: int = 1) -> int:
        """Count these; the number to log now (0: not yet)."""
        self.since += count
        now = self.clock()
        if now - self.last < self.interval_s:
            return 0
        self.last, due, self.since = now, self.since, 0
        return due


class Backfill:
    """--score-from: results of transactions before it are dropped (their features are already
    in the state); counted in fraudscore_backfilled_transactions_total, and logged when the
    backfill starts and when scoring does."""

    def __init__(self, score_from_s: int, label: str, metrics):
        self.score_from_s = score_from_s
        self.label = label  # --score-from as given, for the log
        self.metrics = metrics
        self.count = 0
        self._started = self._scoring = False

    def live(self, result, raw):
        """The batch's results from --score-from on. `raw`: its RawBatch (event times of its
        valid messages, by position)."""
        live = raw.seconds[np.searchsorted(raw.index, result.index)] >= self.score_from_s
        backfilled = len(live) - int(live.sum())
        if backfilled:
            if not self._started:
                self._started = True
                log.info("backfill: transactions before %s update the feature state only (no result, no alert)",
                         self.label)
            self.metrics.backfilled.inc(backfilled)
            self.count += backfilled
        if live.any() and not self._scoring:
            self._scoring = True
            log.info("scoring transactions from %s on (%d before it folded into the state so far)", self.label, self.count)
        return result.take(np.flatnonzero(live)) if backfilled else result
