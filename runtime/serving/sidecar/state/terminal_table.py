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

    table = TerminalTable(config, terminals, metrics)
    table.start()            # every partition, from the beginning (or from a snapshot's `positions`)
    table.catch_up(bound_s)  # before each batch; False if not every partition was read in time
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import numpy as np

from fraudscore.features.online import TerminalBuckets, TerminalState, late_in_order
from fraudscore.serving.sidecar.clients import common_config
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.delivery import MAX_KEY_BYTES
from fraudscore.serving.transactions import decode_labels, decode_transactions

log = logging.getLogger("fraudscore.sidecar")

READ_BATCH = 10_000
OFFSET_BEGINNING = -2  # confluent_kafka.OFFSET_BEGINNING
PARTITION_EOF = -191  # confluent_kafka.KafkaError.PARTITION_EOF


class TerminalTable:
    """Reads the input and labels topics into `terminals`; `metrics` counts the confirmations;
    `before_apply` is called before rows go in (the owner caps the table's eviction there); a read
    ends early, not caught up, once `stopping()` is true."""

    def __init__(self, config: SidecarConfig, terminals: TerminalState | TerminalBuckets, metrics, before_apply: Callable[[], None] = lambda: None,
                 stopping: Callable[[], bool] = lambda: False):
        self.config = config
        self.terminals = terminals
        self.metrics = metrics
        self.reader = None
        self.caught_up = False
        self.partition_watermarks: dict[int, int] = {}  # input partition -> newest event time read
        self._reader_partitions: list = []
        self._ends: dict[tuple[str, int], int] = {}  # partition -> offset where the reader last hit its end
        self.positions: dict[tuple[str, int], int] = {}  # partition -> the next offset not yet in the table
        self.before_apply = before_apply
        self.stopping = stopping
        self.highs: dict[tuple[str, int], int] = {}  # partition -> its high watermark at the last read

    def start(self, positions: dict[tuple[str, int], int] | None = None) -> None:
        """Start the global reader: every partition of the input and labels topics, from the
        beginning, or from `positions` (a snapshot's: what its table had read) where given."""
        from confluent_kafka import Consumer, TopicPartition

        c = self.config
        self.reader = Consumer(common_config(c) | {
            # Never commits: the group id only satisfies librdkafka; offsets are not stored.
            "group.id": f"{c.group_id}.terminal-table.{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed" if c.exactly_once else "read_uncommitted",
            "fetch.wait.max.ms": 10,
            "queued.max.messages.kbytes": 16384,
            # The end of a partition is signalled: offsets of transaction markers would
            # otherwise keep the position short of the high watermark for ever.
            "enable.partition.eof": True,
        } | c.kafka | {"auto.offset.reset": "earliest"})  # an offset lost to retention: the oldest kept, never the end
        topics = [c.input_topic] + ([c.labels_topic] if c.labels_topic else [])
        metadata = self.reader.list_topics(timeout=c.startup_timeout_s)
        self._reader_partitions = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics
                                   for p in sorted(metadata.topics[t].partitions)]
        self.positions = dict(positions or {})
        self.reader.assign([TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), OFFSET_BEGINNING))
                            for tp in self._reader_partitions])

    @property
    def partitions(self) -> list[tuple[str, int]]:
        """Every (topic, partition) the table reads."""
        return [(tp.topic, tp.partition) for tp in self._reader_partitions]

    def reset(self, terminals: TerminalState | TerminalBuckets) -> None:
        """Read everything again, from the beginning, into `terminals` (a fresh state)."""
        self.terminals = terminals
        self.caught_up = False
        self.partition_watermarks.clear()
        self._ends.clear()
        self.positions.clear()
        for tp in self._reader_partitions:
            self.reader.seek(tp)  # tp.offset is OFFSET_BEGINNING

    def catch_up(self, bound_s: int | None = None, timeout_s: float | None = None) -> bool:
        """Read the labels topic up to its current high watermarks and each input partition up to
        its high watermark or past event time `bound_s` (None: to the high watermark). True when done."""
        from confluent_kafka import KafkaException, TopicPartition

        c, reader = self.config, self.reader
        t0 = time.monotonic()
        deadline = t0 + (c.drain_timeout_s if timeout_s is None else timeout_s)
        targets = {}
        try:
            for tp in self._reader_partitions:
                if not self._past((tp.topic, tp.partition), bound_s):
                    _, high = reader.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                           timeout=c.startup_timeout_s, cached=False)
                    targets[(tp.topic, tp.partition)] = high
        except KafkaException as exc:  # a leader moving, a broker restarting: try again before the next batch
            log.warning("terminal table: high watermarks unavailable (%s); retrying before the next batch", exc)
            return False
        self.highs.update(targets)
        remaining = self._behind(targets) if targets else []
        while remaining and time.monotonic() < deadline and not self.stopping():
            # A short wait: consume() blocks until READ_BATCH messages or the timeout, and what is
            # missing is usually a few messages already on their way.
            messages = reader.consume(num_messages=READ_BATCH, timeout=0.002)
            if messages:
                self._apply(messages)
            remaining = [key for key in self._behind(targets, remaining) if not self._past(key, bound_s)]
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

    def lag(self, topic: str) -> dict[int, int]:
        """Messages of `topic` not read yet, per partition, against the high watermarks of the last read."""
        return {p: max(0, high - max(self.positions.get((t, p), 0), self._ends.get((t, p), 0)))
                for (t, p), high in self.highs.items() if t == topic}

    def _past(self, key: tuple[str, int], bound_s: int | None) -> bool:
        """An input partition that has shown an event time past `bound_s`."""
        if bound_s is None or key[0] != self.config.input_topic:
            return False
        newest = self.partition_watermarks.get(key[1])
        return newest is not None and newest > bound_s

    def _behind(self, targets: dict, among=None) -> list:
        from confluent_kafka import TopicPartition

        keys = list(targets) if among is None else among
        positions = self.reader.position([TopicPartition(t, p) for t, p in keys])
        return [(tp.topic, tp.partition) for tp in positions
                if max(tp.offset, self._ends.get((tp.topic, tp.partition), 0)) < targets[(tp.topic, tp.partition)]]

    def _apply(self, messages: list) -> None:
        c = self.config
        for m in messages:
            if m.error() is None:
                self.positions[(m.topic(), m.partition())] = m.offset() + 1
            elif m.error().code() == PARTITION_EOF:
                self._ends[(m.topic(), m.partition())] = m.offset()
        # Keys over the limit are dead-lettered by the scoring path: they are not transactions here either.
        tx = [m for m in messages if m.error() is None and m.topic() == c.input_topic
              and len(m.key() or b"") <= MAX_KEY_BYTES]
        labels = [m.value() for m in messages if m.error() is None and m.topic() == c.labels_topic]
        if tx:
            stamps = np.fromiter((m.timestamp()[1] for m in tx), np.int64, len(tx))
            raw = decode_transactions([m.value() for m in tx], max_message_bytes=c.max_message_bytes, timestamps_ms=stamps)
            if len(raw):
                partitions = np.fromiter((tx[i].partition() for i in raw.index.tolist()), np.int64, len(raw))
                on_time = np.ones(len(raw), bool)
                for p in np.unique(partitions).tolist():
                    rows = np.flatnonzero(partitions == p)
                    # The scorer dead-letters these (late): they count in no window.
                    on_time[rows] = ~late_in_order(raw.seconds[rows], self.partition_watermarks.get(p), c.allowed_lateness_s)
                    high = int(raw.seconds[rows].max())
                    self.partition_watermarks[p] = max(self.partition_watermarks.get(p, high), high)
                self.before_apply()
                self.terminals.add_transactions(raw.ids[on_time], raw.seconds[on_time], raw.terminals[on_time])
        if labels:
            batch = decode_labels(labels, max_message_bytes=c.max_message_bytes)
            counts = self.terminals.add_labels(batch.ids, batch.seconds, batch.terminals)
            m = self.metrics
            m.labels.labels("applied").inc(counts.applied)
            m.labels.labels("pending").inc(counts.pending)
            m.labels.labels("duplicate").inc(counts.duplicate)
            m.labels.labels("expired").inc(counts.expired)
            m.labels.labels("unreadable").inc(batch.unreadable)
            m.labels.labels("genuine").inc(batch.genuine)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
