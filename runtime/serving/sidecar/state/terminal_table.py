"""The terminal table of a raw-mode sidecar: every partition of the input topic and the
labels topic, read whole into one terminal state (`TerminalState`, or `TerminalBuckets` at a
resolution above 1 s: the "global table" pattern).

A terminal serves customers on every partition, so its windows need every partition's
transactions, whichever partitions this instance scores. Before a batch is scored the
reader catches up: the labels topic to its high watermarks (every confirmation written
before the batch was consumed is counted), and each input partition either to its high
watermark or until it has read an event time past `bound_s`, whichever comes first.

The bound is what lets a backlog start scoring at once and spares a broker round trip per
partition and batch: the bound is the batch's newest event time less the terminal delay
(where its windows end) plus the allowed lateness. Once a partition has shown an event
time past it, no row it still holds can fall in those windows: such a row would be late,
and late rows (in each partition's arrival order, the scorer's own rule, `late_in_order`)
are left out of the table as the scorer dead-letters them.

With --state-topic the table reads the terminal feed (feed.py) instead of the input: each
partition's transactions as its owner decoded them, 32 bytes a transaction, no JSON. Where a
batch needs rows the feed does not hold yet (its owner behind this instance, or no owner yet:
a first start on a backlog), or the feed has a gap, the table reads that partition's input
itself from where it stands, as far as that catch-up needs (the fallback), and goes back to
the feed where the input has reached the record after the gap (the feed is sought back to
it). Either way a partition's rows go in once, in offset order: `positions[(input, p)]` is
the next input offset the table has not applied, whichever source brought the ones before.

    table = TerminalTable(config, terminals, metrics)
    table.start()            # every partition, from the beginning (or from a snapshot's `positions`)
    table.catch_up(bound_s)  # before each batch; False if not every partition was read in time
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from fraudscore.features.online import TerminalBuckets, TerminalState, late_in_order
from fraudscore.serving.kafka import OFFSET_BEGINNING, PARTITION_EOF
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.reporting import Throttled
from fraudscore.serving.sidecar.state.feed import decode_record, feed_topic, fingerprint
from fraudscore.serving.sidecar.state.reader import PartitionReader
from fraudscore.serving.transactions import decode_labels, decode_transactions
from fraudscore.serving.wire import MAX_KEY_BYTES

log = logging.getLogger(__name__)

READ_BATCH = 10_000
WARN_EVERY_S = 30.0  # a repeated catch-up warning (broker or topic gone) at most this often


class TerminalTable:
    """Reads the input (or its feed) and labels topics into `terminals`; `metrics` counts the
    confirmations and rows; `before_apply` is called before rows go in (the owner caps the
    table's eviction there); a read ends early, not caught up, once `stopping()` is true."""

    def __init__(self, config: SidecarConfig, terminals: TerminalState | TerminalBuckets, metrics, before_apply: Callable[[], None] = lambda: None,
                 stopping: Callable[[], bool] = lambda: False):
        self.config = config
        self.terminals = terminals
        self.metrics = metrics
        self.kafka = PartitionReader(config)  # the consumer, and the probe that asks the partitions' ends
        self.caught_up = False
        self.partition_watermarks: dict[int, int] = {}  # input partition -> newest event time read
        self.inputs: list[int] = []  # the input topic's partitions
        self.positions: dict[tuple[str, int], int] = {}  # partition -> the next offset not yet in the table
        self.before_apply = before_apply
        self.stopping = stopping
        self.highs: dict[tuple[str, int], int] = {}  # partition -> its high watermark at the last read
        self.feed: str | None = None  # the feed topic, when there is one to read
        self.fallback: set[int] = set()  # input partitions read from the input during this catch-up
        self.gaps: set[int] = set()  # input partitions whose feed skipped offsets: read from the input next
        # input partition -> (input offset, feed offset) of the first record after its gap: the
        # feed is sought back there once the input has been read up to that input offset.
        self.rejoin: dict[int, tuple[int, int]] = {}
        self._lows: dict[int, int] = {}  # input partition -> its low watermark (what retention left)
        self.mark = fingerprint(config)
        self._feed_highs: dict[int, int] = {}  # input partition -> its feed's high watermark, this catch-up
        self._warned: dict[str, Throttled] = {}  # kind -> its warnings' throttle

    def start(self, positions: dict[tuple[str, int], int] | None = None) -> None:
        """Start the global reader: every partition of the labels topic and of the input topic's
        feed (or of the input itself, without a feed), from the beginning, or from `positions`
        (a snapshot's: what its table had read) where given."""
        c = self.config
        metadata = self.kafka.start()
        self.inputs = sorted(metadata.topics[c.input_topic].partitions)
        self.feed = self._usable_feed(metadata)
        labels = [(c.labels_topic, p) for p in sorted(metadata.topics[c.labels_topic].partitions)] if c.labels_topic else []
        sources = [(self.feed, p) for p in self.inputs] if self.feed else [(c.input_topic, p) for p in self.inputs]
        self.positions = dict(positions or {})
        self._assign(sources + labels)

    def _usable_feed(self, metadata) -> str | None:
        """The feed topic, if the state topic has one with a partition for every input partition."""
        c = self.config
        if not c.state_topic:
            return None
        name = feed_topic(c.state_topic)
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None or len(topic.partitions) < len(self.inputs):
            found = "not found" if topic is None or topic.error is not None else f"{len(topic.partitions)} partitions"
            log.warning("terminal feed %s: %s (it needs %d, one per input partition); every instance reads every "
                        "input partition instead. Create it with `fraudscore topics create --state-topic %s`",
                        name, found, len(self.inputs), c.state_topic)
            return None
        return name

    @property
    def reader(self):
        """The consumer reading the table's partitions (PartitionReader.consumer)."""
        return self.kafka.consumer

    @property
    def end_probe(self):
        """The consumer asking the partitions' watermarks (PartitionReader.probe)."""
        return self.kafka.probe

    @property
    def partitions(self) -> list[tuple[str, int]]:
        """Every (topic, partition) the table reads now."""
        return list(self.kafka.assigned)

    def _assign(self, keys: list[tuple[str, int]]) -> None:
        self.kafka.assign(keys, self.positions)

    def _unassign(self, keys: list[tuple[str, int]]) -> None:
        self.kafka.unassign(keys)

    def reset(self, terminals: TerminalState | TerminalBuckets) -> None:
        """Read everything again, from the beginning, into `terminals` (a fresh state)."""
        self.terminals = terminals
        self.caught_up = False
        self.partition_watermarks.clear()
        self.kafka.ends.clear()
        self.positions.clear()
        self.gaps.clear()
        self.rejoin.clear()
        self._end_fallback()
        for t, p in self.kafka.assigned:
            self.kafka.seek(t, p, OFFSET_BEGINNING)

    def catch_up(self, bound_s: int | None = None, timeout_s: float | None = None, feed_only: bool = False) -> bool:
        """Read the labels topic up to its current high watermarks and each input partition up to
        its high watermark or past event time `bound_s` (None: to the high watermark). True when done.

        `feed_only` (with a feed): each partition's feed to its high watermark instead, never
        the input (an idle refresh: what the owners have written is enough until a batch needs more)."""
        c = self.config
        t0 = time.monotonic()
        deadline = t0 + (c.drain_timeout_s if timeout_s is None else timeout_s)
        self.kafka.serve_probe()
        feed_only = feed_only and bool(self.feed)
        self._feed_highs = {}
        targets = self._targets(bound_s, feed_only)
        if targets is None:
            return False
        self._feed_ends(targets)
        self.highs.update(targets)
        try:
            remaining = [k for k in targets if not self._done(k, targets[k])]
            while remaining and time.monotonic() < deadline and not self.stopping():
                if self.feed and not feed_only:
                    self._fall_back([k[1] for k in remaining if k[0] == c.input_topic])
                messages = self.kafka.consume(READ_BATCH)
                if messages:
                    self._apply(messages)
                remaining = [k for k in remaining if not self._done(k, targets[k]) and not self._past(k, bound_s)]
        finally:
            self.gaps -= {p for p in self.fallback if self._done((c.input_topic, p), targets.get((c.input_topic, p), 0))}
            self._end_fallback()
        if remaining:
            # A slice (an explicit timeout: the idle read of a restore) is expected to end short.
            (log.debug if timeout_s is not None or self.stopping() else log.warning)(
                "terminal table: %d partition(s) not read to their high watermark within %.0f s; retrying "
                "before the next batch", len(remaining), deadline - t0)
            return False
        if not self.caught_up:
            self.caught_up = True
            log.info("terminal table caught up: %d transactions of %d terminals, %d pending confirmations, %.1f MB, "
                     "%.2f s", len(self.terminals), self.terminals.entities, self.terminals.pending_labels,
                     self.terminals.nbytes / 1e6, time.monotonic() - t0)
        return True

    def _targets(self, bound_s: int | None, feed_only: bool) -> dict[tuple[str, int], int] | None:
        """The offset each source must be read to: its high watermark now, for the labels topic and
        every input partition (its feed with `feed_only`) not yet past `bound_s`. None when the
        broker does not answer (the catch-up is tried again before the next batch)."""
        from confluent_kafka import KafkaException

        c, targets = self.config, {}
        sources = [(self.feed, p) for p in self.inputs] if feed_only else [(c.input_topic, p) for p in self.inputs]
        try:
            for t, p in sources + [k for k in self.kafka.assigned if k[0] == c.labels_topic]:
                if not self._past((t, p), bound_s):
                    low, high = self.kafka.watermarks(t, p)
                    targets[(t, p)] = high
                    if t == c.input_topic:
                        self._lows[p] = low
        except KafkaException as exc:  # a leader moving, a broker restarting: try again before the next batch
            self._warn("ends", "terminal table: high watermarks unavailable (%s); retrying before the next batch", exc)
            return None
        return targets

    def _feed_ends(self, targets: dict[tuple[str, int], int]) -> None:
        """With a feed: the feed's high watermark of each input partition still behind its target
        (where the feed has nothing more and the input must serve); a feed that does not answer
        marks its partition a gap (read from the input)."""
        from confluent_kafka import KafkaException

        c = self.config
        if not self.feed:
            return
        for t, p in targets:
            if t == c.input_topic and p not in self.gaps and not self._done((t, p), targets[(t, p)]):
                try:
                    self._feed_highs[p] = self.kafka.watermarks(self.feed, p)[1]
                except KafkaException as exc:  # the feed gone or unavailable: the input serves, slower, as exact
                    self._warn("feed", "terminal feed %s unavailable (%s); its partitions are read from the input "
                               "until it answers again", self.feed, exc)
                    self.gaps.add(p)

    def _warn(self, what: str, message: str, *args) -> None:
        """A warning at most every WARN_EVERY_S per kind (`what`); the repeats in between at debug,
        counted in the next warning: a broker or topic that is gone fails every batch's catch-up."""
        due = self._warned.setdefault(what, Throttled(WARN_EVERY_S)).add()
        if not due:
            log.debug(message, *args)
            return
        log.warning(message + (f" ({due - 1} more since the last warning)" if due > 1 else ""), *args)

    def _fall_back(self, behind: list[int]) -> None:
        """Read from the input the partitions still behind whose feed has nothing more (or a gap)."""
        feed = self.feed
        wanted = [p for p in behind if p not in self.fallback and (
            p in self.gaps or self._done((feed, p), self._feed_highs.get(p, 0)))]
        if wanted:
            self.fallback.update(wanted)
            self._assign([(self.config.input_topic, p) for p in wanted])

    def _end_fallback(self) -> None:
        """Back to the feed alone: the input's partitions are read only while a catch-up needs them."""
        if self.feed and self.fallback:
            self._unassign([(self.config.input_topic, p) for p in sorted(self.fallback)])
            self.fallback.clear()

    def lag(self, topic: str) -> dict[int, int]:
        """Messages of `topic` not read yet, per partition, against the high watermarks of the last read."""
        return {p: max(0, high - max(self.positions.get((t, p), 0), self.kafka.ends.get((t, p), 0)))
                for (t, p), high in self.highs.items() if t == topic}

    def _past(self, key: tuple[str, int], bound_s: int | None) -> bool:
        """An input partition that has shown an event time past `bound_s`."""
        if bound_s is None or key[0] != self.config.input_topic:
            return False
        newest = self.partition_watermarks.get(key[1])
        return newest is not None and newest > bound_s

    def _done(self, key: tuple[str, int], target: int) -> bool:
        """Everything of `key` before offset `target` is in the table (read, or skipped as a marker)."""
        return max(self.positions.get(key, 0), self.kafka.ends.get(key, 0)) >= target

    def _apply(self, messages: list) -> None:
        c = self.config
        ok = [m for m in messages if m.error() is None]
        for m in messages:
            if m.error() is not None and m.error().code() == PARTITION_EOF:
                self.kafka.ends[(m.topic(), m.partition())] = m.offset()
        # Keys over the limit are dead-lettered by the scoring path: they are not transactions here either.
        tx = [m for m in ok if m.topic() == c.input_topic and len(m.key() or b"") <= MAX_KEY_BYTES]
        raw, row_of = None, None
        if tx:
            stamps = np.fromiter((m.timestamp()[1] for m in tx), np.int64, len(tx))
            raw = decode_transactions([m.value() for m in tx], max_message_bytes=c.max_message_bytes, timestamps_ms=stamps)
            row_of = np.full(len(tx), -1, np.int64)  # message of `tx` -> its decoded row
            row_of[raw.index] = np.arange(len(raw))
        # Each partition's rows in offset order, from whichever source brought them first.
        chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # (partitions, ids, seconds, terminals)
        taken: list[int] = []  # rows of `raw` to apply, in read order (flushed into `chunks` before a feed record)
        parts: list[int] = []
        read_from_input = read_from_feed = 0
        i = 0
        for m in ok:
            topic, p = m.topic(), m.partition()
            if topic == c.input_topic:
                row = -1
                if len(m.key() or b"") <= MAX_KEY_BYTES:
                    row, i = int(row_of[i]), i + 1
                key = (topic, p)
                if m.offset() >= self.positions.get(key, 0):
                    self.positions[key] = m.offset() + 1
                    if row >= 0:
                        taken.append(row)
                        parts.append(p)
            elif topic == self.feed:
                self.positions[(topic, p)] = m.offset() + 1
                rows = self._feed_rows(m)
                if rows is not None and len(rows[0]):
                    if taken:
                        chunks.append(self._input_chunk(raw, taken, parts))
                        taken, parts = [], []
                    chunks.append((np.full(len(rows[0]), p, np.int64), *rows))
                    read_from_feed += len(rows[0])
            elif topic == c.labels_topic:
                self.positions[(topic, p)] = m.offset() + 1
        if taken:
            read_from_input = len(taken)
            chunks.append(self._input_chunk(raw, taken, parts))
        if read_from_input:
            self.metrics.terminal_rows.labels("input").inc(read_from_input)
        if read_from_feed:
            self.metrics.terminal_rows.labels("feed").inc(read_from_feed)
        if chunks:
            self._add(chunks)
        if self.rejoin:
            self._rejoin_feed()
        self._apply_labels([m.value() for m in ok if m.topic() == c.labels_topic])

    def _apply_labels(self, values: list[bytes]) -> None:
        """Confirmations read from the labels topic into the table, counted by outcome."""
        if not values:
            return
        batch = decode_labels(values, max_message_bytes=self.config.max_message_bytes)
        counts = self.terminals.add_labels(batch.ids, batch.seconds, batch.terminals)
        m = self.metrics
        m.labels.labels("applied").inc(counts.applied)
        m.labels.labels("pending").inc(counts.pending)
        m.labels.labels("duplicate").inc(counts.duplicate)
        m.labels.labels("expired").inc(counts.expired)
        m.labels.labels("unreadable").inc(batch.unreadable)
        m.labels.labels("genuine").inc(batch.genuine)

    def _rejoin_feed(self) -> None:
        """Back to the feed where the input has been read up to the record after a gap: the feed
        is sought back to that record and the partition's input is no longer read."""
        from confluent_kafka import KafkaException

        c = self.config
        for p, (first, feed_offset) in list(self.rejoin.items()):
            if self.positions.get((c.input_topic, p), -1) < first:
                continue
            del self.rejoin[p]
            if (self.feed, p) not in self.kafka.assigned:
                continue
            try:
                self.kafka.seek(self.feed, p, feed_offset)
                self._feed_highs[p] = self.kafka.watermarks(self.feed, p)[1]
            except KafkaException as exc:  # the input goes on serving the partition: slower, as exact
                log.debug("terminal feed: partition %d not sought back to %d (%s)", p, feed_offset, exc)
                continue
            self.positions[(self.feed, p)] = feed_offset
            # The end the reader hit before the seek is behind us now: left in place, it made the
            # feed look read to its end, so the input was assigned again and both were read (which
            # came first depended on timing; the feed test caught it once the ends moved to a
            # connection of their own).
            self.kafka.ends.pop((self.feed, p), None)
            self.gaps.discard(p)  # a record that does not join after all marks it again
            if p in self.fallback:
                self._unassign([(c.input_topic, p)])
                self.fallback.discard(p)

    @staticmethod
    def _input_chunk(raw, rows: list[int], partitions: list[int]) -> tuple:
        take = np.asarray(rows, np.int64)
        return np.asarray(partitions, np.int64), raw.ids[take], raw.seconds[take], raw.terminals[take]

    def _feed_rows(self, m) -> tuple | None:
        """A feed record's rows the table does not hold yet; None (and the partition marked as a gap)
        if the record cannot be applied."""
        p, key = m.partition(), (self.config.input_topic, m.partition())
        try:
            record = decode_record(m.value(), self.mark)
        except ValueError as exc:
            self.metrics.feed_records.labels("unreadable").inc()
            # Once per run of them: a feed of another deployment would otherwise log every record.
            (log.debug if p in self.gaps else log.warning)(
                "terminal feed %s[%d] offset %d: %s; reading that partition's input instead", m.topic(), p, m.offset(), exc)
            self.gaps.add(p)
            return None
        position = self.positions.get(key)
        if position is None:  # nothing read of p yet: a record from where retention left the input starts it
            position = 0 if record.first > self._lows.get(p, 0) else record.first
        if record.through <= position:
            return None  # read already (from the input, or an earlier record of a rewound batch)
        if record.first > position:
            self.metrics.feed_records.labels("gap").inc()
            (log.debug if p in self.gaps else log.info)(
                "terminal feed: partition %d's record starts at offset %d, the table is at %d; reading the input "
                "as far as it is needed, then the feed again from there", p, record.first, position)
            self.gaps.add(p)
            self.rejoin.setdefault(p, (record.first, m.offset()))
            return None
        record = record.rows_from(position)
        self.positions[key] = record.through
        self.gaps.discard(p)  # joined where the table stands: whatever was wrong before is behind it
        self.rejoin.pop(p, None)
        return record.ids, record.seconds, record.terminals

    def _add(self, chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Rows of several partitions (each partition's in its offset order) into the table."""
        c = self.config
        partitions = np.concatenate([chunk[0] for chunk in chunks])
        ids = np.concatenate([chunk[1] for chunk in chunks])
        seconds = np.concatenate([chunk[2] for chunk in chunks])
        terminals = np.concatenate([chunk[3] for chunk in chunks])
        on_time = np.ones(len(ids), bool)
        for p in np.unique(partitions).tolist():
            rows = np.flatnonzero(partitions == p)
            # The scorer dead-letters these (late): they count in no window.
            on_time[rows] = ~late_in_order(seconds[rows], self.partition_watermarks.get(p), c.allowed_lateness_s)
            high = int(seconds[rows].max())
            self.partition_watermarks[p] = max(self.partition_watermarks.get(p, high), high)
        self.before_apply()
        self.terminals.add_transactions(ids[on_time], seconds[on_time], terminals[on_time])

    def close(self) -> None:
        self.kafka.close()
