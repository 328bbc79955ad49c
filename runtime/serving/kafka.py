"""What every Kafka client of the project does the same way (runtime, bench and tests), and the
librdkafka constants it compares against, taken from confluent-kafka rather than copied as numbers.

confluent-kafka's `produce()` only queues a message; when librdkafka's local queue is full it
raises BufferError, and the caller must let the producer send (serve its delivery reports with
`poll()`) before trying again. Eight copies of that loop, each a little different, became one.

    >>> class Full:  # a producer whose queue is full once, then has room
    ...     def __init__(self): self.full, self.sent, self.polls = 1, [], 0
    ...     def produce(self, topic, value, key=None, **kwargs):
    ...         if self.full:
    ...             self.full -= 1
    ...             raise BufferError("queue full")
    ...         self.sent.append((topic, value, key))
    ...     def poll(self, timeout): self.polls += 1
    >>> p = Full()
    >>> produce_waiting(p, "tx-in", b"{}", b"7"), p.sent, p.polls
    (True, [('tx-in', b'{}', b'7')], 1)
    >>> produce_waiting(Full(), "tx-in", b"{}", give_up=lambda: True)
    False
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, OFFSET_INVALID, KafkaError

PARTITION_EOF = KafkaError._PARTITION_EOF
"""The error code of a consumer's "reached the end of the partition" event (enable.partition.eof)."""

__all__ = ["OFFSET_BEGINNING", "OFFSET_END", "OFFSET_INVALID", "PARTITION_EOF", "produce_waiting"]


def produce_waiting(producer, topic: str, value: bytes | None, key: bytes | None = None, *,
                    give_up: Callable[[], bool] | None = None, poll_s: float = 0.05, **kwargs) -> bool:
    """`producer.produce(topic, value, key, **kwargs)`, waiting `poll_s` at a time (delivery
    reports served) while the local queue is full. True once queued; False if `give_up()` said
    so while the queue stayed full. A local refusal (KafkaException: too large, a fatal
    producer error) propagates: what to do with it is the caller's to say."""
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return True
        except BufferError:
            if give_up is not None and give_up():
                return False
            producer.poll(poll_s)
