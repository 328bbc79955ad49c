"""Restoring a partition's customer windows from the input topic (raw mode).

The changelog of customer state is the input topic itself: when an instance is assigned a
partition it replays the partition from its first retained offset up to the group's
committed offset into a fresh `CustomerState`, without scoring; the loop then scores
from the committed offset on. Late rows are decided in arrival order, row by row
(`late_in_order`), exactly as when they were first scored, so the same messages rebuild
the same state whatever the batch boundaries.

    states = restore_partitions(config, consumer, [0, 2], spec, metrics)
"""

from __future__ import annotations

import logging
import time
import uuid

import numpy as np

from fraudscore.features.online import CustomerState
from fraudscore.features.spec import FeatureSpec
from fraudscore.serving.sidecar.clients import common_config
from fraudscore.errors import FraudscoreError
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.delivery import MAX_KEY_BYTES
from fraudscore.serving.sidecar.terminal_table import OFFSET_BEGINNING, PARTITION_EOF, READ_BATCH
from fraudscore.serving.transactions import decode_transactions

log = logging.getLogger("fraudscore.sidecar")

OFFSET_INVALID = -1001  # confluent_kafka.OFFSET_INVALID: no committed offset


class RestoreFailed(FraudscoreError):
    """A partition's customer windows could not be rebuilt from Kafka (after retries)."""

    exit_code = 3


def restore_partitions(config: SidecarConfig, consumer, partitions: list[int], spec: FeatureSpec, metrics,
                       attempts: int = 3) -> dict[int, CustomerState]:
    """Rebuild the customer state of newly assigned partitions from the input topic, up to the
    group's committed offsets (or the high watermark when consumption starts at latest).

    A broker error (a leader moving, a timeout) retries the whole restore; after `attempts`
    it raises RestoreFailed: scoring with half-rebuilt windows would skew every feature."""
    from confluent_kafka import KafkaException

    for attempt in range(1, attempts + 1):
        try:
            return _restore(config, consumer, partitions, spec, metrics)
        except (KafkaException, RestoreFailed) as exc:
            if attempt == attempts:
                raise RestoreFailed(f"partitions {partitions}: customer windows not restored after {attempts} "
                                    f"attempts ({exc}); the group gives the partitions to another instance") from None
            log.warning("restore of partitions %s failed (%s); retrying", partitions, exc)
            time.sleep(attempt)
    return {}


def _restore(config: SidecarConfig, consumer, partitions: list[int], spec: FeatureSpec, metrics) -> dict[int, CustomerState]:
    from confluent_kafka import Consumer, TopicPartition

    c = config
    states: dict[int, CustomerState] = {}
    committed = consumer.committed([TopicPartition(c.input_topic, p) for p in partitions], timeout=c.startup_timeout_s)
    for tp in committed:
        if tp.error is not None:
            raise RestoreFailed(f"committed offset of partition {tp.partition}: {tp.error}")
    reader = Consumer(common_config(c) | {
        "group.id": f"{c.group_id}.restore.{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "fetch.wait.max.ms": 10, "enable.partition.eof": True,
        "isolation.level": "read_committed" if c.exactly_once else "read_uncommitted",
    } | c.kafka | {"auto.offset.reset": "earliest"})  # an offset lost to retention: the oldest kept, never the end
    try:
        for tp in committed:
            t0 = time.monotonic()
            state = states[tp.partition] = CustomerState(spec, allowed_lateness_s=c.allowed_lateness_s)
            end = tp.offset
            if end == OFFSET_INVALID:
                low, high = reader.get_watermark_offsets(TopicPartition(c.input_topic, tp.partition), timeout=c.startup_timeout_s, cached=False)
                end = low if c.offset_reset == "earliest" else high
            rows = _replay(c, reader, tp.partition, end, state, metrics)
            seconds = time.monotonic() - t0
            metrics.restore_seconds.observe(seconds)
            metrics.restored_transactions.inc(rows)
            log.info("partition %d: customer windows restored from %d messages in %.2f s (%d kept, %.1f MB)",
                     tp.partition, rows, seconds, len(state), state.nbytes / 1e6)
    finally:
        reader.close()
    return states


def _replay(config: SidecarConfig, reader, partition: int, end: int, state: CustomerState, metrics) -> int:
    """Feed offsets [first retained, end) of `partition` into `state`; the number of messages read."""
    from confluent_kafka import TopicPartition

    c = config
    if end <= 0:
        return 0
    reader.assign([TopicPartition(c.input_topic, partition, OFFSET_BEGINNING)])
    rows, done = 0, False
    while not done:
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


def late_in_order(seconds: np.ndarray, watermark: int | None, lateness_s: int) -> np.ndarray:
    """Row i is late when it is more than `lateness_s` older than the newest of the watermark
    and rows 0..i-1."""
    if not len(seconds):
        return np.zeros(0, bool)
    start = np.iinfo(np.int64).min // 2 if watermark is None else watermark
    newest_before = np.maximum.accumulate(np.concatenate([[start], seconds[:-1]]))
    return seconds < newest_before - lateness_s
