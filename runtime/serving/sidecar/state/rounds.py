"""Snapshot rounds of raw mode with --state-topic (`SnapshotRounds`): when one is due, and
what it writes.

A round comes every --snapshot-interval; after failed or skipped rounds every 2, 4, then 8
intervals, never further apart than 5 minutes or the interval itself (a broker or state
topic that is gone costs the loop one short check per round, not a wait per write; and a
round fails at least every 15 minutes, which FraudscoreStateSnapshotsFailing needs to see).
A round writes the customer windows of the partitions its caller says are due and, when
asked, the terminal table; the state topics missing or a write refused stops the round,
is counted and logged, and the state in memory is unharmed.

    rounds = SnapshotRounds(store, config, metrics)
    if rounds.due():
        rounds.write({2: (windows, 1041)}, table, terminal_state, expect)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fraudscore.errors import FraudscoreError
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.state.snapshots import TERMINALS, SnapshotStore, customers_name, encode

log = logging.getLogger(__name__)
SNAPSHOT_BACKOFF_MAX_S = 300.0  # the longest wait between snapshot rounds after failures


class SnapshotRounds:
    """The rounds' schedule and bookkeeping: `written` (partition -> offset of its last snapshot
    written or restored) and `terminal_positions` (the table's positions at its last snapshot)."""

    def __init__(self, store: SnapshotStore, config: SidecarConfig, metrics):
        self.store = store
        self.config = config
        self.metrics = metrics
        self.written: dict[int, int] = {}
        self.terminal_positions: dict | None = None
        self._failed = 0  # rounds in a row that failed or were skipped (back-off)
        self._skip_logged = False  # a skipped round was logged since the last good one
        self._last = time.monotonic()

    def due(self) -> bool:
        interval = self.config.snapshot_interval_s
        wait = min(interval * 2 ** min(self._failed, 3), max(interval, SNAPSHOT_BACKOFF_MAX_S))
        return time.monotonic() - self._last >= wait

    def started(self) -> None:
        """A round begins (due or not: revoke and exit write one too)."""
        self._last = time.monotonic()

    def write(self, customers: dict[int, tuple[object, int]], table, terminal_state,
              expect: Callable[[str], dict]) -> bool:
        """Write each partition's customer windows (`customers`: partition -> (state, the offset it
        covers)) and, with `table` (the TerminalTable, or None), the terminal state at its
        positions; `expect(kind)` is the header a snapshot of that kind must carry. False when
        the round was skipped (the state topics missing)."""
        if not self._topics_present(len(customers), table is not None):
            return False
        ok = True
        for p, (state, covered) in customers.items():
            header = expect("customers") | {"partition": p, "offset": covered, "written_ms": int(time.time() * 1000)}
            if not self._write("customers", customers_name(p), p, state, header):
                ok = False  # the rest waits for the next round: each write would wait its budget too
                break
            self.written[p] = covered
        if ok and table is not None:
            positions = dict(table.positions)
            header = expect("terminals") | {
                "positions": [[t, p, o] for (t, p), o in sorted(positions.items())],
                "partition_watermarks": [[p, w] for p, w in sorted(table.partition_watermarks.items())],
                "written_ms": int(time.time() * 1000)}
            ok = self._write("terminals", TERMINALS, 0, terminal_state, header)
            if ok:
                self.terminal_positions = positions
        self._done(ok)
        return True

    def _topics_present(self, customers: int, terminals: bool) -> bool:
        """Whether the state topics exist now. Without them the round's snapshots (`customers`
        partitions, the table if `terminals`) are skipped and counted, and the first skip is logged."""
        gone: list[str] = []
        try:
            gone = self.store.missing()
            why = f"state topic(s) {', '.join(gone)} missing (`fraudscore topics create --state-topic` makes them)" if gone else ""
        except FraudscoreError as exc:
            why = str(exc)
        if not why:
            return True
        self.metrics.snapshot_writes.labels("customers", "skipped").inc(customers)
        self.metrics.snapshot_writes.labels("terminals", "skipped").inc(int(terminals))
        (log.debug if self._skip_logged else log.error)(
            "snapshots skipped: %s; scoring goes on from the state in memory, snapshots resume once %s%s", why,
            "the topics are back" if gone else "the broker answers",
            " (a restart meanwhile stops at the missing topic)" if gone else "")
        self._skip_logged = True
        self._done(False)
        return False

    def _done(self, ok: bool) -> None:
        if ok and self._failed:
            log.info("snapshots written again after %d failed round(s)", self._failed)
        if ok:
            self._skip_logged = False
        self._failed = 0 if ok else self._failed + 1

    def _write(self, kind: str, name: str, partition: int, state, header: dict) -> bool:
        from confluent_kafka import KafkaException

        t0 = time.perf_counter()
        try:
            blob = encode(state, header)
            chunks = self.store.write(name, partition, blob)
        except (FraudscoreError, KafkaException) as exc:
            self.metrics.snapshot_writes.labels(kind, "failed").inc()
            log.warning("snapshot %s not written (%s); the next one tries again", name, exc)
            return False
        seconds = time.perf_counter() - t0
        self.metrics.snapshot_writes.labels(kind, "ok").inc()
        self.metrics.snapshot_bytes.labels(kind).set(len(blob))
        self.metrics.snapshot_seconds.observe(seconds)
        log.debug("snapshot %s written: %.1f MB in %d chunks, %.2f s", name, len(blob) / 1e6, chunks, seconds)
        return True
