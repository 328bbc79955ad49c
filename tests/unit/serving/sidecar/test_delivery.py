"""Delivery and offsets without a broker: small fakes of the two Kafka clients.

The same behaviour is proven against the real broker in tests/kafka/test_sidecar.py and
test_reliability.py; these tests pin the logic (what is committed, when, and what is
rewound) in milliseconds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from fakes import Message
from fraudscore.serving.sidecar.config import SidecarConfig
from fraudscore.serving.sidecar.delivery import (
    MAX_KEY_BYTES,
    TRUNCATED_DLQ_BYTES,
    DeadLetterLog,
    Delivery,
    next_offsets,
)


class FakeProducer:
    """Records what was produced; `flush` returns how many were left undelivered."""

    def __init__(self, left_after_flush: int = 0, buffer_errors: int = 0, transaction_error: KafkaError | None = None):
        self.sent: list[tuple] = []
        self.left_after_flush = left_after_flush
        self.buffer_errors = buffer_errors
        self.transaction_error = transaction_error
        self.calls: list[str] = []

    def produce(self, topic, value, key, headers=None):
        if self.buffer_errors:
            self.buffer_errors -= 1
            raise BufferError("queue full")
        self.sent.append((topic, value, key, dict(headers or [])))

    def poll(self, timeout):
        self.calls.append("poll")

    def flush(self, timeout):
        self.calls.append("flush")
        return self.left_after_flush

    def begin_transaction(self):
        self.calls.append("begin")

    def send_offsets_to_transaction(self, offsets, metadata, timeout):
        self.calls.append("send_offsets")
        self.offsets = offsets
        if self.transaction_error is not None:
            raise KafkaException(self.transaction_error)

    def commit_transaction(self, timeout):
        self.calls.append("commit_transaction")

    def abort_transaction(self, timeout):
        self.calls.append("abort")


class FakeConsumer:
    def __init__(self):
        self.commits: list[tuple[list, bool]] = []
        self.seeks: list[TopicPartition] = []

    def commit(self, offsets, asynchronous):
        self.commits.append(([(tp.partition, tp.offset) for tp in offsets], asynchronous))

    def seek(self, tp):
        self.seeks.append((tp.partition, tp.offset))

    def consumer_group_metadata(self):
        return object()


def config(**kw) -> SidecarConfig:
    return SidecarConfig(bundle=Path("b"), bootstrap_servers="x:1", input_topic="tx-in", output_topic="tx-scores",
                         alerts_topic="tx-alerts", dlq_topic="tx-dlq", group_id="g", **kw)


BATCH = [Message(0, 10), Message(1, 5), Message(0, 11), Message(1, 6), Message(0, 12)]
ASSIGNED = {("tx-in", 0), ("tx-in", 1)}


def test_next_offsets_are_one_past_the_last_message_of_each_partition() -> None:
    assert sorted((tp.partition, tp.offset) for tp in next_offsets("tx-in", BATCH)) == [(0, 13), (1, 7)]


def test_commits_only_after_every_output_is_acknowledged() -> None:
    producer, consumer = FakeProducer(), FakeConsumer()
    d = Delivery(config(), consumer, producer)
    d.begin()
    d.send_results([b"7", b"8"], [b"r1", b"r2"], [False, True])
    assert consumer.commits == []  # nothing before the flush
    assert d.finish(BATCH, ASSIGNED)
    assert producer.calls == ["flush"]
    assert consumer.commits == [([(0, 13), (1, 7)], True)]
    assert [(t, v) for t, v, _, _ in producer.sent] == [("tx-scores", b"r1"), ("tx-scores", b"r2"), ("tx-alerts", b"r2")]


def test_unacknowledged_outputs_rewind_the_batch_and_commit_nothing() -> None:
    producer, consumer = FakeProducer(left_after_flush=1), FakeConsumer()
    d = Delivery(config(), consumer, producer)
    d.begin()
    d.send_results([b"7"], [b"r1"], [False])
    assert not d.finish(BATCH, ASSIGNED)
    assert consumer.commits == []
    assert sorted(consumer.seeks) == [(0, 10), (1, 5)]


def test_a_failed_delivery_report_rewinds_even_when_flush_empties_the_queue() -> None:
    producer, consumer = FakeProducer(), FakeConsumer()
    d = Delivery(config(), consumer, producer)
    d.begin()
    d.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), Message(0, 0, topic="tx-scores"))
    assert not d.finish(BATCH, ASSIGNED)
    assert consumer.commits == [] and sorted(consumer.seeks) == [(0, 10), (1, 5)]
    d.begin()  # the next attempt starts clean
    assert d.finish(BATCH, ASSIGNED)


def test_rewind_only_seeks_partitions_still_assigned() -> None:
    producer, consumer = FakeProducer(left_after_flush=3), FakeConsumer()
    d = Delivery(config(), consumer, producer)
    d.begin()
    d.finish(BATCH, {("tx-in", 1)})
    assert consumer.seeks == [(1, 5)]


def test_revoke_commits_the_revoked_partitions_synchronously_and_forgets_them() -> None:
    producer, consumer = FakeProducer(), FakeConsumer()
    d = Delivery(config(), consumer, producer)
    d.begin()
    d.finish(BATCH, ASSIGNED)
    consumer.commits.clear()
    d.commit_done({("tx-in", 1)})
    assert consumer.commits == [([(1, 7)], False)]
    d.forget({("tx-in", 1)})
    consumer.commits.clear()
    d.commit_done()
    assert consumer.commits == [([(0, 13)], False)]


def test_nothing_delivered_means_nothing_committed_on_revoke() -> None:
    consumer = FakeConsumer()
    Delivery(config(), consumer, FakeProducer()).commit_done({("tx-in", 0)})
    assert consumer.commits == []


def test_dead_letters_carry_the_reason_and_source_and_oversized_values_are_cut() -> None:
    producer = FakeProducer()
    d = Delivery(config(), FakeConsumer(), producer)
    d.dead_letter(Message(2, 40, value=b"x" * 1_000_000, key=b"k" * (MAX_KEY_BYTES + 10)), "oversized", "big", "v1")
    topic, value, key, headers = producer.sent[0]
    assert topic == "tx-dlq"
    assert len(value) == TRUNCATED_DLQ_BYTES and headers["fraudscore.truncated"] == b"1000000"
    assert len(key) == MAX_KEY_BYTES and headers["fraudscore.key.truncated"] == str(MAX_KEY_BYTES + 10).encode()
    assert headers["fraudscore.reason"] == b"oversized"
    assert (headers["fraudscore.source.partition"], headers["fraudscore.source.offset"]) == (b"2", b"40")


def test_what_delivery_writes_as_a_dead_letter_dlq_reads_back_field_by_field() -> None:
    """The writer (Delivery.dead_letter) and the reader (DeadLetter.from_message) share the
    header names of serving/wire.py: every field comes back, cuts included."""
    from fraudscore.serving.dlq import DeadLetter

    producer = FakeProducer()
    d = Delivery(config(), FakeConsumer(), producer)
    d.dead_letter(Message(2, 40, value=b"x" * 1_000_000, key=b"k" * (MAX_KEY_BYTES + 10)), "bad_json", "line 1", "v7")
    topic, value, key, headers = producer.sent[0]

    written = SimpleNamespace(  # the message as a consumer of the dead-letter topic gets it
        partition=lambda: 0, offset=lambda: 5, timestamp=lambda: (1, 1_700_000_000_000), key=lambda: key,
        value=lambda: value, headers=lambda: list(headers.items()))
    letter = DeadLetter.from_message(written)
    assert (letter.reason, letter.detail, letter.model_version) == ("bad_json", "line 1", "v7")
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("tx-in", 2, 40)
    assert (letter.truncated, letter.key_truncated) == (1_000_000, MAX_KEY_BYTES + 10)
    assert letter.source == "tx-in/2/40"


def test_a_dead_letter_topic_that_refuses_large_messages_lowers_the_limit() -> None:
    producer = FakeProducer()
    d = Delivery(config(), FakeConsumer(), producer)
    d.dead_letter(Message(0, 1, value=b"y" * 200_000), "bad_json", "", "v1")
    assert len(producer.sent[0][1]) == 200_000  # under the default limit: sent whole
    d.on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), Message(0, 1, topic="tx-dlq"))
    d.dead_letter(Message(0, 1, value=b"y" * 200_000), "bad_json", "", "v1")
    assert len(producer.sent[1][1]) == TRUNCATED_DLQ_BYTES


def test_tombstones_stay_null_in_the_dead_letter_topic() -> None:
    producer = FakeProducer()
    Delivery(config(), FakeConsumer(), producer).dead_letter(Message(0, 1, value=None), "empty", "", "v1")
    assert producer.sent[0][1] is None


def test_a_full_local_queue_waits_instead_of_failing() -> None:
    producer = FakeProducer(buffer_errors=2)
    d = Delivery(config(), FakeConsumer(), producer)
    d.begin()
    d.send_results([b"7"], [b"r"], [False])
    assert "poll" in producer.calls and len(producer.sent) == 1 and producer.sent[0][1] == b"r" and d.failures == []


def test_exactly_once_sends_offsets_in_the_transaction_and_never_commits_directly() -> None:
    producer, consumer = FakeProducer(), FakeConsumer()
    d = Delivery(config(exactly_once=True), consumer, producer)
    d.begin()
    assert d.finish(BATCH, ASSIGNED)
    assert producer.calls == ["begin", "send_offsets", "commit_transaction"]
    assert sorted((tp.partition, tp.offset) for tp in producer.offsets) == [(0, 13), (1, 7)]
    assert consumer.commits == []
    d.commit_done()
    assert consumer.commits == []


def test_exactly_once_aborts_and_rewinds_when_the_transaction_must_abort() -> None:
    error = KafkaError(KafkaError._STATE, "abortable", txn_requires_abort=True)
    producer, consumer = FakeProducer(transaction_error=error), FakeConsumer()
    d = Delivery(config(exactly_once=True), consumer, producer)
    d.begin()
    assert not d.finish(BATCH, ASSIGNED)
    assert producer.calls[-1] == "abort" and sorted(consumer.seeks) == [(0, 10), (1, 5)]


def test_an_abort_that_times_out_at_a_spent_stop_budget_still_rewinds_and_returns() -> None:
    """A stop whose budget is spent gives the transaction 0 s: the abort times out too. That is
    logged, not raised, so the stop goes on to close the consumer (the transaction commits nothing)."""
    error = KafkaError(KafkaError._STATE, "abortable", txn_requires_abort=True)
    producer, consumer = FakeProducer(transaction_error=error), FakeConsumer()

    def abort_times_out(timeout):
        producer.calls.append(("abort", timeout))
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "abort timed out"))

    producer.abort_transaction = abort_times_out
    d = Delivery(config(exactly_once=True), consumer, producer)
    d.budget = lambda: 0.0
    d.begin()
    assert not d.finish(BATCH, ASSIGNED)
    assert producer.calls[-1] == ("abort", 0.0) and sorted(consumer.seeks) == [(0, 10), (1, 5)]


def test_exactly_once_fatal_error_is_raised() -> None:
    from fraudscore.errors import FraudscoreError

    error = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    d = Delivery(config(exactly_once=True), FakeConsumer(), FakeProducer(transaction_error=error))
    d.begin()
    with pytest.raises(FraudscoreError, match="fenced"):
        d.finish(BATCH, ASSIGNED)


def test_dead_letters_are_logged_as_rate_limited_summaries_without_payloads(caplog) -> None:
    now = [100.0]
    producer = FakeProducer()
    d = Delivery(config(), FakeConsumer(), producer)
    d.dead_letters = DeadLetterLog("tx-dlq", interval_s=30.0, clock=lambda: now[0])
    secret = b'{"card": "4111111111111111"'

    def batch(reasons, first_offset, delivered=True):
        producer.left_after_flush = 0 if delivered else 1
        d.begin()
        for k, reason in enumerate(reasons):
            d.dead_letter(Message(3, first_offset + k, value=secret), reason, "detail", "v1")
        return d.finish([Message(3, first_offset + k) for k in range(len(reasons))], {("tx-in", 3)})

    with caplog.at_level("WARNING", logger="fraudscore.serving.sidecar.delivery"):
        assert batch(["bad_json", "missing_field", "missing_field"], 40)  # first dead letters: logged at once
        now[0] += 5
        assert not batch(["wrong_type"], 50, delivered=False)  # rewound: read again, not counted twice
        assert batch(["wrong_type"], 50)
        assert batch(["missing_field"], 51)  # within 30 s of the last line: held
        assert len(caplog.records) == 1
        now[0] += 30
        assert batch(["bad_json"], 52)  # 30 s later: one summary of everything held
        d.dead_letters.close()  # nothing held: no line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("dead-lettered 3 messages to tx-dlq in the last 0 s (missing_field 2, bad_json 1); "
                               "first from tx-in[3]@40")
    assert lines[1].startswith("dead-lettered 3 messages to tx-dlq in the last 30 s (")
    assert "wrong_type 1" in lines[1] and "missing_field 1" in lines[1] and "first from tx-in[3]@50" in lines[1]
    assert not any("4111" in line for line in lines)


def test_held_dead_letters_are_logged_at_close(caplog) -> None:
    now = [0.0]
    dead = DeadLetterLog("tx-dlq", clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="fraudscore.serving.sidecar.delivery"):
        dead.add(Counter(bad_json=1), "tx-in[0]@1")
        now[0] += 1
        dead.add(Counter(bad_json=2), "tx-in[0]@2")
        dead.close()
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "dead-lettered 1 message to tx-dlq in the last 0 s (bad_json 1)",
        "dead-lettered 2 messages to tx-dlq in the last 0 s (bad_json 2)",
    ]


def test_held_dead_letters_are_logged_when_due_even_if_no_more_come(caplog) -> None:
    now = [0.0]
    dead = DeadLetterLog("tx-dlq", interval_s=30.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="fraudscore.serving.sidecar.delivery"):
        dead.add(Counter(bad_json=1), "tx-in[0]@1")  # logged at once
        now[0] += 1
        dead.add(Counter(bad_json=4), "tx-in[0]@2")  # held
        dead.tick()  # 1 s after the last line: still held
        assert len(caplog.records) == 1
        now[0] += 30
        dead.tick()  # due: written without another dead letter
        dead.tick()  # nothing held: nothing written
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "dead-lettered 1 message to tx-dlq in the last 0 s (bad_json 1)",
        "dead-lettered 4 messages to tx-dlq in the last 30 s (bad_json 4)",
    ]


def test_the_wire_module_example_runs() -> None:
    import doctest

    from fraudscore.serving import wire

    result = doctest.testmod(wire)
    assert result.attempted and result.failed == 0


def test_the_produce_helper_examples_run() -> None:
    import doctest

    from fraudscore.serving import kafka

    result = doctest.testmod(kafka)
    assert result.attempted and result.failed == 0
