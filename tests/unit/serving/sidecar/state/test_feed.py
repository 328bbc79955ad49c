"""The terminal feed (serving/sidecar/state/feed.py): records round-trip and refuse damage
and other deployments' records; the writer feeds each offset once per owner, splits large
batches and survives producer errors; against the real broker, a terminal table read from a
feed with a gap, an unreadable record and a record written twice holds exactly what a table
read from the input holds, reading the input only where the feed fell short, and a fresh
table whose feed starts late (retention) reads the input only as far as a batch needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fraudscore.serving.metrics import SidecarMetrics
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.state import feed as feed_module
from fraudscore.serving.sidecar.state.feed import FeedWriter, decode_record, encode_record, fingerprint


def _record(first=5, through=9, seconds=(1, 2, 3)):
    return encode_record(first, through, np.array([5, 6, 8]), np.array([50, 60, 80]), np.array(seconds), np.array([7, 7, 9]))


def test_a_record_round_trips_and_drops_rows_before_an_offset() -> None:
    record = decode_record(_record())
    assert (record.first, record.through, len(record)) == (5, 9, 3)
    later = record.rows_from(6)
    assert (later.first, later.offsets.tolist(), later.ids.tolist(), later.terminals.tolist()) == (6, [6, 8], [60, 80], [7, 9])
    assert len(decode_record(encode_record(3, 3, *[np.zeros(0, np.int64)] * 4))) == 0


@pytest.mark.parametrize("value, says", [
    (None, "shorter"), (b"FSF1", "shorter"), (b"XXXX" + _record()[4:], "magic"), (_record()[:-1], "bytes for 3 rows"),
    (_record(first=6), "not ascending"), (_record(through=8), "not ascending"), (_record(first=9, through=5), "not ascending"),
    (_record(seconds=(1, 2, 2**62)), "event times outside"), (_record(seconds=(-1, 2, 3)), "event times outside"),
])
def test_a_damaged_record_is_refused_with_what_is_wrong(value, says) -> None:
    with pytest.raises(ValueError, match=says):
        decode_record(value)


def test_a_record_written_for_another_input_is_refused() -> None:
    here, there = _config(), _config(input_topic="other")
    value = encode_record(5, 9, np.array([5]), np.array([1]), np.array([2]), np.array([3]), fingerprint(there))
    assert len(decode_record(value, fingerprint(there))) == 1
    with pytest.raises(ValueError, match="another input topic"):
        decode_record(value, fingerprint(here))
    assert fingerprint(here) != fingerprint(_config(max_message_bytes=4096))


class _Producer:
    """Records what FeedWriter produces (a broker-free test of its bookkeeping); raises `fails`
    on the next produce when set."""

    def __init__(self):
        self.sent: list[tuple[int, bytes]] = []
        self.fails: Exception | None = None

    def produce(self, topic, value, partition, on_delivery):
        if self.fails is not None:
            raise self.fails
        self.sent.append((partition, value))

    def poll(self, timeout):
        return 0


def _config(**changes) -> SidecarConfig:
    return SidecarConfig(**{"bundle": Path("b"), "bootstrap_servers": "127.0.0.1:1", "input_topic": "in", "output_topic": "out",
                            "alerts_topic": "alerts", "dlq_topic": "dlq", "group_id": "g", "state_topic": "state"} | changes)


def _writer(**changes) -> FeedWriter:
    writer = FeedWriter(_config(**changes), SidecarMetrics(), partitions=2)
    writer.producer = _Producer()
    return writer


def _decode(value: bytes):
    return decode_record(value, fingerprint(_config()))


def _publish(writer: FeedWriter, partitions: list[int], offsets: list[int], rows: list[int]) -> None:
    """Messages at (partition, offset); transactions decoded from the messages at positions `rows`."""
    p, o = np.array(partitions), np.array(offsets)
    r = np.array(rows, np.int64)
    writer.publish(p, o, p[r], o[r], o[r] * 10, o[r] + 1000, o[r] % 3)


def test_the_writer_feeds_each_offset_once_per_owner_and_skips_batches_read_twice() -> None:
    writer = _writer()
    _publish(writer, [0, 1, 0, 0], [10, 3, 11, 12], [0, 1, 3])  # offset 11 not decoded (dead-lettered)
    records = {p: _decode(v) for p, v in writer.producer.sent}
    assert (records[0].first, records[0].through, records[0].offsets.tolist()) == (10, 13, [10, 12])
    assert (records[1].first, records[1].through, records[1].ids.tolist()) == (3, 4, [30])
    writer.producer.sent.clear()
    _publish(writer, [0, 0, 0], [11, 12, 13], [0, 1, 2])  # a rewound batch: only offset 13 is new
    (p, value), = writer.producer.sent
    assert p == 0 and (_decode(value).first, _decode(value).offsets.tolist()) == (13, [13])
    writer.producer.sent.clear()
    _publish(writer, [0], [15], [0])  # offset 14 a transaction marker: the record starts where the last ended
    assert _decode(writer.producer.sent[-1][1]).first == 14
    writer.producer.sent.clear()
    _publish(writer, [0, 0], [17, 16], [0, 1])  # not one ascending range: not fed
    _publish(writer, [2], [0], [0])  # beyond the feed topic's partitions
    assert writer.producer.sent == []
    writer.forget([1])
    _publish(writer, [1], [3], [0])  # assigned again: fed from where this owner starts
    assert _decode(writer.producer.sent[-1][1]).first == 3


def test_with_offset_reset_latest_records_do_not_join_over_skipped_offsets() -> None:
    # A consumer with `latest` jumps to the end when its offset falls out of range, over
    # messages a reader of the input would still read: the feed must show that as a gap.
    writer = _writer(offset_reset="latest")
    _publish(writer, [0, 0], [10, 11], [0, 1])
    _publish(writer, [0], [500], [0])
    assert _decode(writer.producer.sent[-1][1]).first == 500
    _publish(writer, [0, 0], [500, 501], [0, 1])  # overlapping the last record: still from where it ended
    assert (_decode(writer.producer.sent[-1][1]).first, _decode(writer.producer.sent[-1][1]).offsets.tolist()) == (501, [501])


def test_a_large_batch_goes_in_records_that_join(monkeypatch) -> None:
    monkeypatch.setattr(feed_module, "MAX_RECORD_ROWS", 3)
    writer = _writer()
    offsets = list(range(100, 108))
    _publish(writer, [0] * 8, offsets, [0, 1, 2, 4, 5, 6, 7])  # offset 103 not decoded
    records = [_decode(v) for _, v in writer.producer.sent]
    assert [(r.first, r.through, r.offsets.tolist()) for r in records] == [
        (100, 104, [100, 101, 102]), (104, 107, [104, 105, 106]), (107, 108, [107])]
    assert sum(len(r) for r in records) == 7 and writer.published[0] == 108


def test_producer_errors_are_counted_and_a_fatal_one_stops_the_writer() -> None:
    from confluent_kafka import KafkaError, KafkaException

    writer = _writer()
    writer.producer.fails = BufferError("queue full")
    _publish(writer, [0], [10], [0])
    assert 0 not in writer.published  # readers will see a gap there and read the input
    writer.producer.fails = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    _publish(writer, [0], [11], [0])
    assert not writer.stopped and writer.metrics.registry.get_sample_value(
        "fraudscore_terminal_feed_records_total", {"outcome": "failed"}) == 2
    writer.producer.fails = KafkaException(KafkaError(KafkaError._FATAL, fatal=True))
    _publish(writer, [0], [12], [0])
    assert writer.stopped
    writer.producer.fails = None
    _publish(writer, [0], [13], [0])
    assert writer.producer.sent == []


