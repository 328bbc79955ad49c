"""The terminal table's Kafka side (`PartitionReader`): one consumer assigned whole topics by
hand, and a second that asks the partitions' watermarks on connections of its own.

The reader never commits (its group id only satisfies librdkafka), reads committed
transactions with --exactly-once, signals each partition's end (offsets of transaction
markers would otherwise keep a position short of the high watermark for ever) and, when
an offset was lost to retention, starts at the oldest kept, never the end. The watermarks
are asked on the probe's connections: on a slow link a request on the reader's connection
waits behind the fetch responses it prefetches (16 MB, a minute at 300 kB/s) and timed out
every time, so the table never caught up (a network fault test).

    reader = PartitionReader(config)
    metadata = reader.start()
    reader.assign([("tx-in", 0), ("tx-labels", 0)], positions={})
    low, high = reader.watermarks("tx-in", 0)
    messages = reader.consume(10_000)
"""

from __future__ import annotations

import uuid

from fraudscore.serving.kafka import OFFSET_BEGINNING
from fraudscore.serving.sidecar.clients import common_config
from fraudscore.serving.sidecar.config import SidecarConfig


class PartitionReader:
    """What is assigned (`assigned`, in order) and where the reader last hit each partition's end
    (`ends`: partition -> offset)."""

    def __init__(self, config: SidecarConfig):
        self.config = config
        self.consumer = None
        self.probe = None
        self.assigned: dict[tuple[str, int], None] = {}
        self.ends: dict[tuple[str, int], int] = {}

    def start(self):
        """Both consumers; the cluster's metadata (the topics and their partitions)."""
        from confluent_kafka import Consumer

        c = self.config
        isolation = "read_committed" if c.exactly_once else "read_uncommitted"
        self.consumer = Consumer(common_config(c) | {
            "group.id": f"{c.group_id}.terminal-table.{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": isolation,
            "fetch.wait.max.ms": 10,
            "queued.max.messages.kbytes": 16384,
            "enable.partition.eof": True,
        } | c.kafka | {"auto.offset.reset": "earliest"})
        self.probe = Consumer(common_config(c) | {
            "group.id": f"{c.group_id}.terminal-ends.{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "isolation.level": isolation,  # the reader's ends
        } | c.kafka)
        self.assigned = {}
        return self.consumer.list_topics(timeout=c.startup_timeout_s)

    def assign(self, keys: list[tuple[str, int]], positions: dict[tuple[str, int], int]) -> None:
        """Read these partitions too, each from its position (the beginning without one)."""
        from confluent_kafka import TopicPartition

        keys = [k for k in keys if k not in self.assigned]
        if keys:
            self.consumer.incremental_assign([TopicPartition(t, p, positions.get((t, p), OFFSET_BEGINNING)) for t, p in keys])
            self.assigned.update(dict.fromkeys(keys))

    def unassign(self, keys: list[tuple[str, int]]) -> None:
        from confluent_kafka import TopicPartition

        keys = [k for k in keys if k in self.assigned]
        if keys:
            self.consumer.incremental_unassign([TopicPartition(t, p) for t, p in keys])
            for k in keys:
                del self.assigned[k]

    def seek(self, topic: str, partition: int, offset: int) -> None:
        from confluent_kafka import TopicPartition

        self.consumer.seek(TopicPartition(topic, partition, offset))

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(low, high) of a partition now, asked on the probe's connections (KafkaException if unanswered)."""
        from confluent_kafka import TopicPartition

        return self.probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.config.startup_timeout_s,
                                                cached=False)

    def consume(self, count: int, timeout_s: float = 0.002) -> list:
        """Up to `count` messages (a short wait: consume() blocks until `count` messages or the
        timeout, and what is missing is usually a few messages already on their way)."""
        return self.consumer.consume(num_messages=count, timeout=timeout_s)

    def serve_probe(self) -> None:
        """The probe's log lines and error callbacks, which otherwise wait in its queue."""
        self.probe.poll(0)

    def close(self) -> None:
        for name in ("consumer", "probe"):
            client = getattr(self, name)
            if client is not None:
                client.close()
                setattr(self, name, None)
