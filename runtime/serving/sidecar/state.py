"""Online feature state of one sidecar, kept and rebuilt through Kafka (raw input mode).

Two kinds of state, partitioned the way Kafka partitions the input:

- Customer windows live with their input partition (input keyed by customer id): when
  this instance is assigned a partition it replays that partition from its first
  retained offset up to the group's committed offset into a fresh `CustomerState`,
  without scoring, and only then scores from the committed offset on. A revoked
  partition's state is dropped. Replaying the source is the changelog: nothing else is
  written, and the same messages in the same order rebuild the same state.
- Terminal windows need every partition's transactions (a terminal is used by customers
  on every partition) and the fraud confirmations: a second consumer outside the group
  (the "global table" pattern) reads the whole input topic and the labels topic into one
  `TerminalState`. Before a batch is scored it reads up to the high watermarks, so every
  transaction and confirmation written before the batch was consumed is counted.

Readiness stays false until the terminal table has caught up once and no partition is
restoring; restore time, rows and progress are metrics.

    state = FeatureState(config, spec, metrics)
    state.start(partitions_of_input)      # the global reader, from the beginning
    state.restore(consumer, assigned)      # on assignment
    state.catch_up()                       # before each batch
    matrix, late = state.features(raw, partitions)
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from fraudscore.features.online import CustomerState, TerminalState
from fraudscore.features.spec import FeatureSpec
from fraudscore.features.windows import calendar_features
from fraudscore.serving.sidecar.clients import common_config
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.decode import FLOAT32_MAX, DecodedBatch, Rejection
from fraudscore.serving.pipeline import Emitted
from fraudscore.serving.transactions import RawBatch, decode_labels, decode_transactions

log = logging.getLogger("fraudscore.sidecar")

READ_BATCH = 10_000
OFFSET_BEGINNING = -2  # confluent_kafka.OFFSET_BEGINNING
OFFSET_INVALID = -1001  # confluent_kafka.OFFSET_INVALID: no committed offset
_PARTITION_EOF = -191  # confluent_kafka.KafkaError._PARTITION_EOF


def input_spec(config: SidecarConfig, manifest, current: FeatureSpec | None) -> FeatureSpec | None:
    """The feature specification raw mode computes for this bundle; None in feature mode.

    Raw mode is the default for a bundle whose manifest records a specification. A reload
    may not change it: the state was built for the old one."""
    from fraudscore.errors import UsageError

    recorded = manifest.feature_spec
    if config.input_mode == "features" or (config.input_mode == "" and not recorded):
        if current is not None:
            raise UsageError("the new bundle has no feature specification; restart with --input features to serve it")
        return None
    if not recorded:
        raise UsageError(f"{config.bundle}: --input raw needs a bundle whose manifest records its feature specification "
                         "(bundles exported by fraudscore 0.2+); re-export it, or pass --input features and send "
                         "the feature fields in each message")
    spec = FeatureSpec.from_dict(recorded)
    missing = [f for f in manifest.features if f not in spec.names]
    if missing:
        raise UsageError(f"{config.bundle}: model inputs {', '.join(missing)} are not features raw mode computes; "
                         "use --input features")
    if current is not None and spec != current:
        raise UsageError("the new bundle's feature specification differs from the one being served; restart the sidecar")
    return spec


class FeatureState:
    """Customer windows per assigned input partition and the terminal table of the whole topic.

    `metrics` is the sidecar's SidecarMetrics (restore and label series).
    """

    def __init__(self, config: SidecarConfig, spec: FeatureSpec, metrics):
        self.config = config
        self.spec = spec
        self.metrics = metrics
        self.customers: dict[int, CustomerState] = {}
        # Partitions are read at different speeds (a replay from the start reads one ahead
        # of another), so the terminal table's lateness must cover that skew: its eviction
        # horizon follows the slowest input partition (`_partition_watermarks`).
        self.terminals = TerminalState(spec, allowed_lateness_s=config.allowed_lateness_s)
        self.reader = None
        self._reader_partitions: list = []
        self._partition_watermarks: dict[int, int] = {}
        self._ends: dict[tuple[str, int], int] = {}  # partition -> offset where the reader last hit its end
        self.caught_up = False
        self.restoring: set[int] = set()

    # ------------------------------------------------------------- terminal table

    def start(self) -> None:
        """Start the global reader: every partition of the input and labels topics, from the beginning."""
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
        } | c.kafka)
        topics = [c.input_topic] + ([c.labels_topic] if c.labels_topic else [])
        metadata = self.reader.list_topics(timeout=c.startup_timeout_s)
        self._reader_partitions = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics
                                   for p in sorted(metadata.topics[t].partitions)]
        self.reader.assign(self._reader_partitions)

    def catch_up(self, timeout_s: float | None = None) -> bool:
        """Read the input and labels topics up to their current high watermarks. True when done."""
        from confluent_kafka import TopicPartition

        c, reader = self.config, self.reader
        t0 = time.monotonic()
        deadline = t0 + (c.drain_timeout_s if timeout_s is None else timeout_s)
        targets = {}
        for tp in self._reader_partitions:
            _, high = reader.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=c.startup_timeout_s, cached=False)
            targets[(tp.topic, tp.partition)] = high
        remaining = self._behind(targets)
        while remaining and time.monotonic() < deadline:
            messages = reader.consume(num_messages=READ_BATCH, timeout=0.05)
            if messages:
                self._apply(messages)
            remaining = self._behind(targets, remaining)
        if remaining:
            log.warning("terminal table: %d partition(s) not read to their high watermark within %.0f s; retrying "
                        "before the next batch", len(remaining), deadline - t0)
            return False
        if not self.caught_up:
            self.caught_up = True
            log.info("terminal table caught up: %d transactions of %d terminals, %d pending confirmations, %.1f MB, "
                     "%.2f s", len(self.terminals), self.terminals.entities, self.terminals.pending_labels,
                     self.terminals.nbytes / 1e6, time.monotonic() - t0)
        return True

    def _behind(self, targets: dict, among=None) -> list:
        from confluent_kafka import TopicPartition

        keys = list(targets) if among is None else among
        positions = self.reader.position([TopicPartition(t, p) for t, p in keys])
        return [(tp.topic, tp.partition) for tp in positions
                if max(tp.offset, self._ends.get((tp.topic, tp.partition), 0)) < targets[(tp.topic, tp.partition)]]

    def _apply(self, messages: list) -> None:
        c = self.config
        for m in messages:
            if m.error() is not None and m.error().code() == _PARTITION_EOF:
                self._ends[(m.topic(), m.partition())] = m.offset()
        tx = [m for m in messages if m.error() is None and m.topic() == c.input_topic]
        labels = [m.value() for m in messages if m.error() is None and m.topic() == c.labels_topic]
        if tx:
            raw = decode_transactions([m.value() for m in tx], max_message_bytes=c.max_message_bytes)
            if len(raw):
                self._cap_terminal_horizon()
                partitions = np.fromiter((tx[i].partition() for i in raw.index.tolist()), np.int64, len(raw))
                for p in np.unique(partitions).tolist():
                    high = int(raw.seconds[partitions == p].max())
                    self._partition_watermarks[p] = max(self._partition_watermarks.get(p, high), high)
                self.terminals.add_transactions(raw.ids, raw.seconds, raw.terminals)
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

    # ------------------------------------------------------------- customer windows

    def restore(self, consumer, partitions: list[int]) -> None:
        """Rebuild the customer state of newly assigned partitions from the input topic, up to
        the group's committed offsets (or the high watermark when consumption starts at latest)."""
        from confluent_kafka import Consumer, TopicPartition

        c = self.config
        self.restoring |= set(partitions)
        committed = consumer.committed([TopicPartition(c.input_topic, p) for p in partitions], timeout=c.startup_timeout_s)
        reader = Consumer(common_config(c) | {
            "group.id": f"{c.group_id}.restore.{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "fetch.wait.max.ms": 10, "enable.partition.eof": True,
            "isolation.level": "read_committed" if c.exactly_once else "read_uncommitted",
        } | c.kafka)
        try:
            for tp in committed:
                t0 = time.monotonic()
                state = self.customers[tp.partition] = CustomerState(self.spec, allowed_lateness_s=c.allowed_lateness_s)
                end = tp.offset
                if end == OFFSET_INVALID:
                    low, high = reader.get_watermark_offsets(TopicPartition(c.input_topic, tp.partition), timeout=c.startup_timeout_s, cached=False)
                    end = low if c.offset_reset == "earliest" else high
                rows = self._replay(reader, tp.partition, end, state)
                seconds = time.monotonic() - t0
                self.metrics.restore_seconds.observe(seconds)
                self.metrics.restored_transactions.inc(rows)
                log.info("partition %d: customer windows restored from %d messages in %.2f s (%d kept, %.1f MB)",
                         tp.partition, rows, seconds, len(state), state.nbytes / 1e6)
                self.restoring.discard(tp.partition)
        finally:
            reader.close()

    def _replay(self, reader, partition: int, end: int, state: CustomerState) -> int:
        """Feed offsets [first retained, end) of `partition` into `state`; the number of messages read."""
        from confluent_kafka import TopicPartition

        c = self.config
        if end <= 0:
            return 0
        reader.assign([TopicPartition(c.input_topic, partition, OFFSET_BEGINNING)])
        rows, done = 0, False
        while not done:
            values = []
            for m in reader.consume(num_messages=READ_BATCH, timeout=1.0):
                if m.error() is not None:
                    done = done or (m.error().code() == _PARTITION_EOF)  # nothing retained up to `end` is left
                elif m.offset() < end:
                    values.append(m.value())
                    done = done or m.offset() == end - 1
                else:
                    done = True
            if values:
                raw = decode_transactions(values, max_message_bytes=c.max_message_bytes)
                keep = ~_late_in_order(raw.seconds, state.watermark, c.allowed_lateness_s)
                state.add(raw.ids[keep], raw.seconds[keep], raw.customers[keep], raw.amounts[keep])
                rows += len(values)
                self.metrics.restore_messages.labels(str(partition)).set(rows)
        reader.unassign()
        return rows

    def revoke(self, partitions: list[int]) -> None:
        """Forget the customer state of partitions this instance no longer owns."""
        for p in partitions:
            self.customers.pop(p, None)
            self.restoring.discard(p)

    # ------------------------------------------------------------- scoring

    def decode(self, values: list, partitions: np.ndarray, keys: list, model_features: tuple[str, ...]) -> tuple[DecodedBatch, Emitted]:
        """Raw messages -> the model's rows (online features, stored first) and the rejections.

        `partitions` and `keys` are the messages' Kafka partitions and keys. Late rows are
        rejected (`late`); a row whose feature falls outside float32 is `out_of_range`."""
        raw = decode_transactions(values, max_message_bytes=self.config.max_message_bytes)
        rejections = list(raw.rejections)
        parts = partitions[raw.index]
        expected = [str(c).encode() for c in raw.customers.tolist()]
        mismatched = sum(keys[i] != e for i, e in zip(raw.index.tolist(), expected))
        if mismatched:
            self.metrics.key_mismatches.inc(mismatched)
        late = self.late_mask(raw, parts)
        for i in np.flatnonzero(late).tolist():
            rejections.append(Rejection(int(raw.index[i]), "late", f"TX_DATETIME is more than {self.config.allowed_lateness_s} s "
                                        "older than the newest transaction of its partition; its windows may be incomplete"))
        on = np.flatnonzero(~late)
        full = self.features(raw.take(on), parts[on])
        columns = [self.spec.names.index(f) for f in model_features]
        matrix = full[:, columns]
        in_range = (np.abs(matrix) <= FLOAT32_MAX).all(axis=1)
        for i in np.flatnonzero(~in_range).tolist():
            rejections.append(Rejection(int(raw.index[on[i]]), "out_of_range", "a feature is outside float32's range"))
        keep = on[in_range]
        rejections.sort(key=lambda r: r.index)
        decoded = DecodedBatch(raw.index[keep], raw.ids[keep].tolist(), matrix[in_range].astype(np.float32), rejections)
        return decoded, Emitted(self.spec.names, full[in_range])

    def late_mask(self, raw: RawBatch, partitions: np.ndarray) -> np.ndarray:
        """Rows older than the newest earlier transaction of their partition minus the allowed lateness.

        "Earlier" is in arrival order, row by row, so the decision does not depend on how
        messages were cut into batches: a restore replaying the partition in other batches
        rejects exactly the rows the live run rejected."""
        late = np.zeros(len(raw.seconds), bool)
        for p in np.unique(partitions).tolist():
            rows = np.flatnonzero(partitions == p)
            state = self._customer_state(p)
            late[rows] = _late_in_order(raw.seconds[rows], state.watermark, self.config.allowed_lateness_s)
            if late[rows].any():
                # A redelivery (a rewound batch) was on time the first time: it is scored again.
                late[rows] &= ~state.stored_mask(raw.ids[rows], raw.seconds[rows], raw.customers[rows])
        return late

    def _customer_state(self, partition: int) -> CustomerState:
        state = self.customers.get(partition)
        if state is None:  # assigned without a restore (should not happen): an empty history
            state = self.customers[partition] = CustomerState(self.spec, allowed_lateness_s=self.config.allowed_lateness_s)
        return state

    def _cap_terminal_horizon(self) -> None:
        """Keep in the terminal table everything the partitions this instance scores can still ask for.

        The table reads every partition, some far ahead of the ones scored here (a backlog,
        a restore): its own watermark would evict rows they need. The cap follows the
        slowest assigned partition; one with unscored data but no history yet stops eviction."""
        floors = []
        for p, state in self.customers.items():
            if state.watermark is not None:
                floors.append(state.watermark)
            elif p in self._partition_watermarks:
                floors.append(None)
        if not floors or None in floors:
            self.terminals.horizon_cap = np.iinfo(np.int64).min // 4
        else:
            self.terminals.horizon_cap = min(floors) - self.config.allowed_lateness_s - self.spec.terminal_reach_s

    def features(self, raw: RawBatch, partitions: np.ndarray) -> np.ndarray:
        """float64 rows x spec.names for the batch's (on-time) transactions; stores them first."""
        out = np.empty((len(raw), len(self.spec.names)), np.float64)
        self._cap_terminal_horizon()
        columns: dict[str, np.ndarray] = {"TX_AMOUNT": raw.amounts}
        columns.update(calendar_features(raw.seconds, self.spec))
        columns.update(self.terminals.features(raw.seconds, raw.terminals))
        for j, name in enumerate(self.spec.names):
            if name in columns:
                out[:, j] = columns[name]
        for p in np.unique(partitions).tolist():
            rows = np.flatnonzero(partitions == p)
            customer = self._customer_state(p).features(raw.ids[rows], raw.seconds[rows], raw.customers[rows], raw.amounts[rows])
            for j, name in enumerate(self.spec.names):
                if name in customer:
                    out[rows, j] = customer[name]
        return out

    def ready(self) -> bool:
        return self.caught_up and not self.restoring

    @property
    def nbytes(self) -> int:
        return self.terminals.nbytes + sum(s.nbytes for s in self.customers.values())

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def _late_in_order(seconds: np.ndarray, watermark: int | None, lateness_s: int) -> np.ndarray:
    """Row i is late when it is more than `lateness_s` older than the newest of the watermark
    and rows 0..i-1."""
    if not len(seconds):
        return np.zeros(0, bool)
    start = np.iinfo(np.int64).min // 2 if watermark is None else watermark
    newest_before = np.maximum.accumulate(np.concatenate([[start], seconds[:-1]]))
    return seconds < newest_before - lateness_s
