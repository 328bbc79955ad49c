"""Small fakes of the Kafka client's objects, for broker-free unit tests of pure logic (the same
code runs against the real broker in tests/kafka/).

    Message(2, 40, value=b"{}", key=b"7")          # partition 2, offset 40 of "tx-in"
    Message(value=b"...", key=b"5", timestamp_ms=0) # a message of another topic's reader
"""

from __future__ import annotations

import time

TIMESTAMP_CREATE_TIME = 1  # confluent_kafka.TIMESTAMP_CREATE_TIME


class Message:
    """A consumed message, read as the code reads confluent_kafka.Message: topic(), partition(),
    offset(), key(), value(), timestamp() -> (type, milliseconds), headers(), error().
    `timestamp_ms` None: the time the fake was made (a message consumed just now).

    >>> m = Message(1, 5, value=b"{}", timestamp_ms=1_700_000_000_000)
    >>> m.topic(), m.partition(), m.offset(), m.key(), m.timestamp(), m.error()
    ('tx-in', 1, 5, b'7', (1, 1700000000000), None)
    """

    def __init__(self, partition: int = 0, offset: int = 0, value: bytes | None = b"{}", key: bytes | None = b"7",
                 topic: str = "tx-in", timestamp_ms: int | None = None, headers: list | None = None, error=None):
        self._partition, self._offset, self._value, self._key, self._topic = partition, offset, value, key, topic
        self._timestamp = int(time.time() * 1e3) if timestamp_ms is None else timestamp_ms
        self._headers, self._error = headers, error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._timestamp

    def headers(self) -> list | None:
        return self._headers

    def error(self):
        return self._error
