"""Restoring a partition's customer windows from Kafka (raw mode).

The input topic is the source of truth: when an instance is assigned a partition it loads
the partition's last snapshot (`snapshots.py`, with --state-topic), if one is there and
covers no more than the group's committed offset, and replays the input from the
snapshot's offset up to the committed offset into it, without scoring; with no usable
snapshot it replays the partition from its first retained offset. The loop then scores
from the committed offset on. Late rows are decided in arrival order, row by row
(`late_in_order`), exactly as when they were first scored, so the same messages rebuild
the same state whatever the batch boundaries.

    restored = restore_partitions(config, consumer, [0, 2], spec, metrics, snapshots)
    restored[0].state, restored[0].offset     # CustomerState, the next input offset it covers
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fraudscore.features.online import CustomerState, late_in_order
from fraudscore.features.spec import FeatureSpec
from fraudscore.serving.sidecar.clients import common_config
from fraudscore.errors import FraudscoreError
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.state.snapshots import SnapshotRefused, SnapshotStore, customers_name, decode
from fraudscore.serving.kafka import OFFSET_BEGINNING, OFFSET_INVALID, PARTITION_EOF
from fraudscore.serving.sidecar.state.terminal_table import READ_BATCH
from fraudscore.serving.transactions import decode_transactions
from fraudscore.serving.wire import MAX_KEY_BYTES

log = logging.getLogger(__name__)



@dataclass
class Restored:
    """A partition's customer windows as restored: they cover input offsets below `offset`."""

    state: CustomerState
    offset: int
    snapshot: int | None  # the offset of the snapshot it started from; None: replayed from the first retained offset
    committed: bool = True  # `offset` is the group's committed offset (else: none was, it is where scoring starts)


class RestoreFailed(FraudscoreError):
    """A partition's customer windows could not be rebuilt from Kafka (after retries)."""

    exit_code = 3


class RestoreAbandoned(Exception):
    """The sidecar is stopping: a restore in progress is given up (the partitions go to their next owner)."""


def restore_partitions(config: SidecarConfig, consumer, partitions: list[int], spec: FeatureSpec, metrics,
                       snapshots: SnapshotStore | None = None, attempts: int = 3,
                       stopping: Callable[[], bool] = lambda: False) -> dict[int, Restored]:
    """Rebuild the customer state of newly assigned partitions from the input topic, up to the
    group's committed offsets (or the high watermark when consumption starts at latest).

    A broker error (a leader moving, a timeout) retries the whole restore; after `attempts`
    it raises RestoreFailed: scoring with half-rebuilt windows would skew every feature.
    RestoreAbandoned when `stopping()` turns true meanwhile."""
    from confluent_kafka import KafkaException

    for attempt in range(1, attempts + 1):
        try:
            return _restore(config, consumer, partitions, spec, metrics, snapshots, stopping)
        except (KafkaException, RestoreFailed) as exc:
            if stopping():
                raise RestoreAbandoned() from None
            if attempt == attempts:
                raise RestoreFailed(f"partitions {partitions}: customer windows not restored after {attempts} "
                                    f"attempts ({exc}); the group gives the partitions to another instance") from None
            log.warning("restore of partitions %s failed (%s); retrying", partitions, exc)
            time.sleep(attempt)
            if stopping():
                raise RestoreAbandoned() from None
    return {}


def _restore(config: SidecarConfig, consumer, partitions: list[int], spec: FeatureSpec, metrics,
             snapshots: SnapshotStore | None, stopping: Callable[[], bool]) -> dict[int, Restored]:
    from confluent_kafka import Consumer, TopicPartition

    c = config
    out: dict[int, Restored] = {}
    committed = consumer.committed([TopicPartition(c.input_topic, p) for p in partitions], timeout=c.startup_timeout_s)
    for tp in committed:
        if tp.error is not None:
            raise RestoreFailed(f"committed offset of partition {tp.partition}: {tp.error}")
    blobs = snapshots.read([customers_name(p) for p in partitions]) if snapshots is not None else {}
    reader = Consumer(common_config(c) | {
        "group.id": f"{c.group_id}.restore.{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "fetch.wait.max.ms": 10, "enable.partition.eof": True,
        "isolation.level": "read_committed" if c.exactly_once else "read_uncommitted",
    } | c.kafka | {"auto.offset.reset": "earliest"})  # an offset lost to retention: the oldest kept, never the end
    try:
        for tp in committed:
            t0 = time.monotonic()
            end = tp.offset
            if end == OFFSET_INVALID:
                low, high = reader.get_watermark_offsets(TopicPartition(c.input_topic, tp.partition), timeout=c.startup_timeout_s, cached=False)
                end = low if c.offset_reset == "earliest" else high
            state, start = None, OFFSET_BEGINNING
            if snapshots is not None:
                state, start = _from_snapshot(c, spec, tp.partition, blobs[customers_name(tp.partition)], end, metrics)
            snapshot = start if state is not None else None
            if state is None:
                state = CustomerState(spec, allowed_lateness_s=c.allowed_lateness_s)
            rows = _replay(c, reader, tp.partition, start, end, state, metrics, stopping)
            seconds = time.monotonic() - t0
            metrics.restore_seconds.observe(seconds)
            metrics.restored_transactions.inc(rows)
            log.info("partition %d: customer windows restored from %s and %d messages in %.2f s (%d kept, %.1f MB)",
                     tp.partition, "none" if snapshot is None else f"a snapshot at offset {snapshot}", rows, seconds,
                     len(state), state.nbytes / 1e6)
            out[tp.partition] = Restored(state, end, snapshot, tp.offset != OFFSET_INVALID)
    finally:
        reader.close()
    return out


def _from_snapshot(config: SidecarConfig, spec: FeatureSpec, partition: int, blob, end: int, metrics) -> tuple[CustomerState | None, int]:
    """(state, its offset) from the partition's snapshot, or (None, OFFSET_BEGINNING) with the
    refusal counted and logged when there is none that fits."""
    c = config
    try:
        if isinstance(blob, SnapshotRefused):
            raise blob
        expect = {"kind": "customers", "spec": spec.state_dict(), "allowed_lateness_s": c.allowed_lateness_s,
                  "input_topic": c.input_topic, "group_id": c.group_id, "partition": partition}
        header, state = decode(blob, expect, CustomerState(spec, allowed_lateness_s=c.allowed_lateness_s))
        offset = int(header["offset"])
        if offset > end:
            raise SnapshotRefused("ahead", f"snapshot at offset {offset}, beyond the group's committed offset {end} "
                                           "(offsets reset, or a commit that failed after the snapshot)")
    except SnapshotRefused as refused:
        metrics.snapshot_restores.labels("customers", refused.reason).inc()
        log_ = log.info if refused.reason == "missing" else log.warning
        log_("partition %d: snapshot not used (%s: %s); replaying the input from its first retained offset",
             partition, refused.reason, refused)
        return None, OFFSET_BEGINNING
    metrics.snapshot_restores.labels("customers", "restored").inc()
    metrics.snapshot_bytes.labels("customers").set(len(blob))
    return state, offset


def _replay(config: SidecarConfig, reader, partition: int, start: int, end: int, state: CustomerState, metrics,
            stopping: Callable[[], bool] = lambda: False) -> int:
    """Feed offsets [start (OFFSET_BEGINNING: the first retained), end) of `partition` into `state`;
    the number of messages read."""
    from confluent_kafka import TopicPartition

    c = config
    if end <= max(start, 0):
        return 0
    reader.assign([TopicPartition(c.input_topic, partition, start)])
    rows, done = 0, False
    while not done:
        if stopping():
            raise RestoreAbandoned()
        values, stamps = [], []
        for m in reader.consume(num_messages=READ_BATCH, timeout=0.05):
            if m.error() is not None:
                if m.error().code() != PARTITION_EOF:
                    raise RestoreFailed(f"reading partition {partition}: {m.error()}")
                done = done or m.partition() == partition  # nothing retained up to `end` is left
            elif m.offset() < end:
                if len(m.key() or b"") <= MAX_KEY_BYTES:  # longer keys were dead-lettered, not scored
                    values.append(m.value())
                    stamps.append(m.timestamp()[1])
                done = done or m.offset() == end - 1
            else:
                done = True
        if values:
            raw = decode_transactions(values, max_message_bytes=c.max_message_bytes,
                                      timestamps_ms=np.array(stamps, dtype=np.int64))
            keep = ~late_in_order(raw.seconds, state.watermark, c.allowed_lateness_s)
            state.add(raw.ids[keep], raw.seconds[keep], raw.customers[keep], raw.amounts[keep])
            rows += len(values)
            metrics.restore_messages.labels(str(partition)).set(rows)
    reader.unassign()
    return rows
